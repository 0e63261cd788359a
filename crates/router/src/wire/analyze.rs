//! What a client's SQL text is and which shard keys it names, so the wire
//! front end can pick a shard for plain SQL.
//!
//! [`analyze`] parses a text with sqlparser's PostgreSQL dialect, one
//! statement at a time, and walks each statement's syntax tree. It finds:
//! - the statement's [`Kind`] (read, write, transaction control, session
//!   state, the `shardline.shard_key` setting);
//! - the shard keys it names for sharded tables ([`Analysis::keys`]), and
//!   whether some read or write of a sharded table has none
//!   ([`Analysis::unkeyed`]);
//! - whether it touches a sharded table at all, or only system catalogs;
//! - for a read spread over shards, how to merge the shards' rows
//!   ([`FanOut`]).
//!
//! # Keys
//! A reference to a sharded table (`FROM t`, `JOIN t`, an `UPDATE` or
//! `DELETE` target) is pinned by a top-level `AND` conjunct of its own
//! `WHERE` (or of an inner join's `ON`) that compares its shard-key column
//! with a literal or a `$n` parameter: `k = 5`, `5 = t.k`, `k IN ('a')`,
//! `k IN (1, 2)` (both keys), `k = ANY(ARRAY[1, 2])`, `(k, x) = (1, 2)`.
//! Casts around the value are unwrapped (`'5'::bigint`, `CAST($1 AS
//! int8)`, `bigint '5'`), as is a sign (`-5`). A conjunct under `OR` or
//! `NOT` pins nothing. Equal shard-key columns carry a pin from one table
//! to another (`a.k = b.k`, `JOIN b USING (k)`, a correlated
//! subquery's `b.k = outer.k`); the nullable side of an outer join takes
//! pins from its `ON` but never gives any. An `INSERT ... VALUES` names its
//! rows' keys ([`Analysis::insert_row_keys`]). Every pin lands in
//! [`Analysis::keys`], deduplicated, in order of appearance: several keys
//! mean the statement needs several keys' shards (or names contradictory
//! ones; the caller refuses or fans out either way).
//!
//! Column names are matched without knowing tables' columns: an
//! unqualified column pins the sharded tables of its own `FROM` whose key
//! column has that name; a qualified one (`a.k`, `t.k`) the table its
//! qualifier names, in its own or an enclosing query.
//!
//! # Errs towards "unkeyed"
//! What the walk cannot follow leaves the reference unpinned, so
//! [`Analysis::unkeyed`] is set and the caller fans out or refuses rather
//! than misroutes: keys given outside a derived table, view or
//! set-returning function; `INSERT` without a column list or from a
//! `SELECT`; `MERGE` targets. What it cannot see at all: a view or a
//! function that reads a sharded table is not a sharded table, and
//! `catalog_only` counts functions as harmless (`SELECT my_func()` is
//! catalog-only); a user table named `pg_*` counts as a catalog.
//!
//! # Bounds
//! Analysis never panics, and its stack use is bounded: the tests run it
//! on 1 MiB stacks in debug builds, half a tokio worker's. Statements
//! nested past the parser's recursion limit, or chaining more than 10,000
//! operators, are reported as text the parser rejects; the walk follows
//! `AND`/`OR`/`+` chains and `UNION` chains in loops, and past a depth
//! bound stops descending and reports the statement as touching sharded
//! tables with no key. sqlparser 0.64 parses nested calls in linear time
//! (0.59 took exponential time on `f(f(f(...)))`).
//!
//! # Layout
//! - `text`: token-level work: splitting a text into statements, the
//!   comment key, `SET shardline.shard_key`, the nesting bound, and the
//!   fallback for text the parser rejects.
//! - `walk`: the syntax-tree walk: kinds, relations, keys.
//! - `fanout`: the merge shape of a read spread over shards.
//! - `cache`: [`AnalysisCache`].
//! - `shape`: texts that differ only in their keys, sharing one analysis.

mod cache;
mod copy;
mod fanout;
mod prepared;
mod rows;
mod shape;
mod text;
mod walk;

#[cfg(test)]
mod tests;

use std::panic::{catch_unwind, AssertUnwindSafe};

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

pub use cache::AnalysisCache;
pub use copy::{CopyFormat, CopySpec};
pub use prepared::PreparedSql;
pub use rows::InsertRows;

/// A shard key found in a statement.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyRef {
    /// The value as text: `'42'` and `42` give `"42"`, `'ab''c'` gives
    /// `"ab'c"`, `-5` gives `"-5"`, `TRUE` gives `"true"`.
    Literal(String),
    /// A parameter `$n`, 1-based, bound by the extended protocol.
    Param(usize),
}

/// What a statement does, for routing and session bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// `SELECT`, `VALUES`, `SHOW`, `WITH ... SELECT` without data-modifying
    /// CTEs, and `EXPLAIN` of a read.
    Read,
    /// `INSERT`, `UPDATE`, `DELETE`, `MERGE`, a `WITH` holding one of
    /// them, `SELECT ... INTO` (it creates a table), `EXPLAIN` of a write,
    /// and reads that take row locks (`FOR UPDATE`, `FOR SHARE`, ...):
    /// those only run on a primary, so they count as writes.
    Write,
    /// `BEGIN`, `START TRANSACTION` (any modes).
    Begin,
    /// `COMMIT`, `END`. `COMMIT AND CHAIN` is [`Kind::Other`]: it opens a
    /// new transaction at once.
    Commit,
    /// `ROLLBACK`, `ABORT`. `ROLLBACK TO SAVEPOINT`, `ROLLBACK AND CHAIN`,
    /// `SAVEPOINT` and `RELEASE` are [`Kind::Other`].
    Rollback,
    /// `SET [SESSION | LOCAL] shardline.shard_key { = | TO } value`;
    /// `value` is `None` for `TO DEFAULT` and for `RESET
    /// shardline.shard_key`. Like any setting, PostgreSQL undoes it when
    /// its transaction rolls back, and `SET LOCAL` ends with the
    /// transaction.
    SetShardKey {
        /// The key as text, as [`KeyRef::Literal`] gives it; an unquoted
        /// word is folded to lower case, as PostgreSQL folds it.
        value: Option<String>,
        /// `SET LOCAL`.
        local: bool,
    },
    /// Other statements that change session state: `SET`, `RESET`,
    /// `DISCARD`, `PREPARE`, `DEALLOCATE`, `LISTEN`, `UNLISTEN`, `LOAD`,
    /// `DECLARE`, `FETCH`, `CLOSE`. `RESET ALL` and `DISCARD ALL` also
    /// clear `shardline.shard_key` ([`Analysis::clears_shard_key`]).
    Session,
    /// DDL, `COPY`, `TRUNCATE`, `LOCK`, `CALL`, `DO`, `EXECUTE`, `NOTIFY`,
    /// savepoints, and anything else, including text that does not parse.
    Other,
}

/// An aggregate a merge of shards' rows can combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    /// `count(...)`: the shards' counts add up.
    Count,
    /// `sum(...)`: the shards' sums add up (NULL when all are NULL).
    Sum,
    /// `min(...)`: the least of the shards' minimums.
    Min,
    /// `max(...)`: the greatest of the shards' maximums.
    Max,
    /// `avg(...)`: averages do not combine; the caller asks each shard for
    /// `sum` and `count` instead, or refuses.
    Avg,
}

/// An output column computed by an [`Aggregate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputAggregate {
    /// The output column, 0-based.
    pub column: usize,
    /// Its aggregate.
    pub function: Aggregate,
}

/// One `ORDER BY` term, on an output column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SortKey {
    /// The output column, 0-based.
    pub column: usize,
    /// `DESC`.
    pub descending: bool,
    /// Whether NULLs sort first: as written, else PostgreSQL's default
    /// (last for `ASC`, first for `DESC`).
    pub nulls_first: bool,
}

/// How to merge the rows of a read run on several shards: concatenate,
/// combine aggregates (per group), sort, then skip `offset` and keep
/// `limit` rows.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FanOut {
    /// Output columns that are `count`/`sum`/`min`/`max`/`avg` calls.
    pub aggregates: Vec<OutputAggregate>,
    /// Whether the read has `GROUP BY`: rows merge per value of the output
    /// columns that are not aggregates (every `GROUP BY` expression is
    /// one of them). Aggregates without `GROUP BY` merge into one row.
    pub group_by: bool,
    /// `ORDER BY`, every term an output column.
    pub order_by: Vec<SortKey>,
    /// `LIMIT n` or `FETCH FIRST n ROWS ONLY`; each shard must then be
    /// asked for `offset + n` rows.
    pub limit: Option<u64>,
    /// `OFFSET n`.
    pub offset: Option<u64>,
}

/// What [`analyze`] found in a text.
#[derive(Debug, Clone, PartialEq)]
pub struct Analysis {
    /// The text's kind: its one statement's, or for several statements
    /// [`Kind::Write`] if any writes, [`Kind::Read`] if all read, else
    /// [`Kind::Other`] (see [`Analysis::parts`]). An empty text (only
    /// comments or semicolons) is [`Kind::Other`] with no statements.
    pub kind: Kind,
    /// How many statements the text holds.
    pub statements: usize,
    /// Each statement's kind, in order (`BEGIN; ...; COMMIT` in one text
    /// shows here).
    pub parts: Vec<Kind>,
    /// Shard keys the statements name for sharded tables (see the module
    /// docs), with each `INSERT ... VALUES` row's key; deduplicated, in
    /// order of appearance. A `PREPARE`'s statement gives none: its `$n`
    /// are bound by a later `EXECUTE`.
    pub keys: Vec<KeyRef>,
    /// One key per row of an `INSERT INTO t (.., k, ..) VALUES ...` into
    /// a sharded table, in row order; empty for other statements, and when
    /// a row's key is not a literal or parameter (`DEFAULT`, an
    /// expression).
    pub insert_row_keys: Vec<KeyRef>,
    /// For a one-statement `INSERT ... VALUES` of several rows, each with
    /// its key in [`Analysis::insert_row_keys`]: where its rows are in
    /// the text, so the rows can be split per shard.
    pub insert_rows: Option<InsertRows>,
    /// A `COPY` of a sharded table from or to the client.
    pub copy: Option<CopySpec>,
    /// A one-statement text that is a SQL `PREPARE`, `EXECUTE` or
    /// `DEALLOCATE`.
    pub prepared: Option<PreparedSql>,
    /// Whether some read or write of a sharded table has no key: the
    /// statement needs rows that [`Analysis::keys`] does not cover (or the
    /// analysis could not tell), so routing by those keys alone could
    /// miss rows.
    pub unkeyed: bool,
    /// Whether the text reads or writes a sharded table. Errs towards
    /// true: set for text that does not parse, for `CALL`/`EXECUTE`/`DO`,
    /// and for DDL and utility statements naming a sharded table anywhere.
    pub touches_sharded: bool,
    /// Whether every relation the text names is a system catalog
    /// (`pg_catalog.*`, `information_schema.*`, `pg_toast.*`, unqualified
    /// `pg_*`), or it names none (`SELECT 1`, `SELECT version()`, `SHOW
    /// x`, `SET x`, `BEGIN`): psql's `\d` family and drivers' type
    /// look-ups, runnable on any shard. Never true for [`Kind::Other`]
    /// statements; true for an empty text.
    pub catalog_only: bool,
    /// Whether an `UPDATE` (or `ON CONFLICT DO UPDATE`, or `MERGE`) assigns
    /// a sharded table's key column, which would move the row to another
    /// shard.
    pub updates_shard_key: bool,
    /// Whether the text clears `shardline.shard_key` as a side effect
    /// (`RESET ALL`, `DISCARD ALL`).
    pub clears_shard_key: bool,
    /// The merge shape of a one-statement read of sharded tables, when its
    /// shards' rows can be merged by concatenation, aggregate combination,
    /// sorting and limits; `None` when not (`DISTINCT`, `HAVING`, window
    /// functions, other aggregates, subqueries, CTEs, set operations,
    /// joins of sharded tables not on their keys, `LIMIT $1`, ...). Set
    /// whatever the keys: the caller uses it when the read spans several
    /// shards.
    pub fanout: Option<FanOut>,
    /// Whether the text names something that may change the server
    /// session beyond what its kind says (`set_config`, `DO`, ...: the
    /// keyword guard of [`crate::classify::may_change_session`]), found
    /// once per text rather than per execution.
    pub guard_changes_session: bool,
    /// The parser's message for a statement it could not parse (the
    /// first such). The caller may still route by the comment key
    /// ([`comment_key`]) or the session's `shardline.shard_key`.
    pub parse_error: Option<String>,
}

impl Analysis {
    /// The analysis of a statement that names no relation and no key.
    fn control(kind: Kind) -> Self {
        Analysis {
            parts: vec![kind.clone()],
            kind,
            statements: 1,
            keys: Vec::new(),
            insert_row_keys: Vec::new(),
            insert_rows: None,
            copy: None,
            prepared: None,
            unkeyed: false,
            touches_sharded: false,
            catalog_only: true,
            updates_shard_key: false,
            clears_shard_key: false,
            fanout: None,
            guard_changes_session: false,
            parse_error: None,
        }
    }

    /// The analysis of a statement that did not parse: anything is
    /// possible, unless the fallback finds a read naming only catalogs.
    fn unparsed(message: String, fallback: Option<text::Fallback>) -> Self {
        let catalog = fallback.filter(|f| f.read && f.catalog_only);
        let mut analysis = Analysis::control(match catalog {
            Some(_) => Kind::Read,
            None => Kind::Other,
        });
        analysis.parse_error = Some(message);
        if catalog.is_none() {
            analysis.unkeyed = true;
            analysis.touches_sharded = true;
            analysis.catalog_only = false;
        }
        analysis
    }

    /// Merges the analyses of a text's statements.
    fn merge(mut parts: Vec<Analysis>) -> Self {
        if parts.len() == 1 {
            if let Some(only) = parts.pop() {
                return only;
            }
        }
        let mut merged = Analysis::control(Kind::Other);
        merged.statements = parts.len();
        merged.parts = parts.iter().map(|p| p.kind.clone()).collect();
        if !parts.is_empty() {
            merged.kind = if parts.iter().any(|p| p.kind == Kind::Write) {
                Kind::Write
            } else if parts.iter().all(|p| p.kind == Kind::Read) {
                Kind::Read
            } else {
                Kind::Other
            };
        }
        for part in parts {
            for key in part.keys {
                if !merged.keys.contains(&key) {
                    merged.keys.push(key);
                }
            }
            merged.insert_row_keys.extend(part.insert_row_keys);
            merged.unkeyed |= part.unkeyed;
            merged.touches_sharded |= part.touches_sharded;
            merged.catalog_only &= part.catalog_only;
            merged.updates_shard_key |= part.updates_shard_key;
            merged.clears_shard_key |= part.clears_shard_key;
            if merged.parse_error.is_none() {
                merged.parse_error = part.parse_error;
            }
        }
        merged
    }
}

/// The shard key a comment in `sql` gives: `/* shardline.shard_key='42'
/// */` or `-- shardline.shard_key = 42` (case-insensitive name,
/// whitespace around `=` tolerated, the value single- or double-quoted or
/// a bare word ending at whitespace, `,`, `;` or `)`). The first such
/// comment wins; comment-like text inside string constants and quoted
/// identifiers is skipped. The text need not parse.
pub fn comment_key(sql: &str) -> Option<String> {
    text::comment_key(sql)
}

/// Analyzes one SQL text (see the module docs). `shard_key_of(table)`
/// gives a sharded table's key column, for a table name as PostgreSQL
/// folds it (unqualified, lower case unless quoted); `None` for tables
/// that are not sharded. A text with several statements is analyzed as a
/// whole (how, each field of [`Analysis`] says). Text the parser
/// rejects is [`Kind::Other`], touching sharded tables with no key, with
/// [`Analysis::parse_error`] set; except that a read whose every `FROM`
/// and `JOIN` names a system catalog (scanned from its tokens) is still
/// [`Kind::Read`] and `catalog_only`.
pub fn analyze(sql: &str, shard_key_of: &dyn Fn(&str) -> Option<String>) -> Analysis {
    let mut analysis = analyze_text(sql, shard_key_of);
    analysis.guard_changes_session = crate::classify::may_change_session(sql, false);
    analysis
}

fn analyze_text(sql: &str, shard_key_of: &dyn Fn(&str) -> Option<String>) -> Analysis {
    let dialect = PostgreSqlDialect {};
    // sqlparser is third-party code fed with client text: a panic in it
    // must not take the connection's task down with it. Nothing is shared
    // across the call, so unwinding leaves no broken state behind.
    let tokens = catch_unwind(AssertUnwindSafe(|| {
        Tokenizer::new(&dialect, sql).tokenize_with_location()
    }));
    let tokens = match tokens {
        Ok(Ok(tokens)) => tokens,
        Ok(Err(e)) => return Analysis::unparsed(format!("sql parser error: {e}"), None),
        Err(_) => return Analysis::unparsed("sql parser failed".to_string(), None),
    };
    let parts = text::split(tokens)
        .into_iter()
        .enumerate()
        .map(|(index, tokens)| statement(sql, index, tokens, shard_key_of))
        .collect();
    let mut analysis = Analysis::merge(parts);
    if analysis.statements == 1
        && analysis.insert_row_keys.len() > 1
        && !analysis.unkeyed
        && analysis.kind == Kind::Write
    {
        analysis.insert_rows =
            rows::insert_rows(sql).filter(|r| r.rows.len() == analysis.insert_row_keys.len());
    }
    if analysis.statements == 1
        && analysis.parse_error.is_none()
        && matches!(analysis.kind, Kind::Session | Kind::Other)
    {
        analysis.prepared = prepared::find(sql);
    }
    analysis
}

/// Analyzes the text's `index`th statement, given as its tokens.
fn statement(
    sql: &str,
    index: usize,
    tokens: Vec<TokenWithSpan>,
    shard_key_of: &dyn Fn(&str) -> Option<String>,
) -> Analysis {
    if let Some(kind) = text::shard_key_setting(&tokens) {
        return Analysis::control(kind);
    }
    let nesting = text::nesting(&tokens);
    if nesting > text::MAX_NESTING {
        return Analysis::unparsed(
            format!("statement too deeply nested to analyze ({nesting} levels)"),
            None,
        );
    }
    let select_words = text::select_words(&tokens);
    let dialect = PostgreSqlDialect {};
    let parsed = catch_unwind(AssertUnwindSafe(|| {
        let mut parser = Parser::new(&dialect).with_tokens_with_locations(tokens);
        let statement = parser.parse_statement()?;
        let next = parser.peek_token();
        if next.token != Token::EOF {
            return Err(sqlparser::parser::ParserError::ParserError(format!(
                "Expected: end of statement, found: {}",
                next.token
            )));
        }
        Ok(walk::statement(&statement, shard_key_of, select_words))
    }));
    match parsed {
        Ok(Ok(walk::Outcome::Done(analysis))) => analysis,
        Ok(Ok(walk::Outcome::Utility(mut analysis))) => {
            // Statements the walk does not follow (DDL, ...) touch a
            // sharded table when they name one anywhere.
            analysis.touches_sharded |= text::statement_tokens(sql, index)
                .is_some_and(|tokens| text::names_sharded(&tokens, shard_key_of));
            analysis
        }
        Ok(Err(e)) => {
            let fallback = text::statement_tokens(sql, index).map(|t| text::fallback(&t));
            Analysis::unparsed(e.to_string(), fallback)
        }
        Err(_) => Analysis::unparsed("sql parser failed".to_string(), None),
    }
}
