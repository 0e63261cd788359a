//! The rows of an `INSERT ... VALUES` as byte ranges of its text, so
//! the rows of one statement can be split per shard and the statement
//! sent to each shard with only its own rows.
//!
//! A lexical scan, not a parse: the caller has parsed the text already
//! ([`super::analyze`] found one key per row). Strings (`'...'`,
//! `E'...'`, `$tag$...$tag$`), quoted identifiers and comments are
//! skipped, so parentheses and commas inside them do not count.

use std::ops::Range;

/// An `INSERT` whose rows are cut out of its text: the statement for a
/// subset of rows is `head`, the rows joined by `", "`, then `tail`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InsertRows {
    /// Up to the first row's `(` (`INSERT INTO t (k, v) VALUES `).
    pub head: Range<usize>,
    /// Each row, `(` to `)`.
    pub rows: Vec<Range<usize>>,
    /// After the last row's `)` (`ON CONFLICT ...`, `RETURNING ...`).
    pub tail: Range<usize>,
}

impl InsertRows {
    /// The statement with only the rows at `picked` (indexes into
    /// [`InsertRows::rows`], in the order given).
    pub fn text_with(&self, sql: &str, picked: &[usize]) -> String {
        let mut out = String::with_capacity(sql.len());
        out.push_str(&sql[self.head.clone()]);
        for (n, &i) in picked.iter().enumerate() {
            if n > 0 {
                out.push_str(", ");
            }
            if let Some(r) = self.rows.get(i) {
                out.push_str(&sql[r.clone()]);
            }
        }
        out.push_str(&sql[self.tail.clone()]);
        out
    }
}

impl InsertRows {
    /// The statement with only the rows at `picked`, its `$n`
    /// parameters numbered anew from 1 in the order of their old numbers;
    /// with the old numbers in the new order. `None` when the text does
    /// not lex.
    pub fn text_with_params(&self, sql: &str, picked: &[usize]) -> Option<(String, Vec<usize>)> {
        let tokens = lex(sql)?;
        let params: Vec<(Range<usize>, usize)> = tokens
            .iter()
            .filter(|t| t.0 == Lexeme::Other && sql[t.1.clone()].starts_with('$'))
            .filter_map(|t| Some((t.1.clone(), sql[t.1.start + 1..t.1.end].parse().ok()?)))
            .collect();
        let mut segments = vec![self.head.clone()];
        for &i in picked {
            segments.push(self.rows.get(i)?.clone());
        }
        segments.push(self.tail.clone());
        let inside = |r: &Range<usize>, s: &Range<usize>| r.start >= s.start && r.end <= s.end;
        let mut olds: Vec<usize> = params
            .iter()
            .filter(|(r, _)| segments.iter().any(|s| inside(r, s)))
            .map(|(_, n)| *n)
            .collect();
        olds.sort_unstable();
        olds.dedup();
        let mut out = String::with_capacity(sql.len());
        let last = segments.len() - 1;
        for (k, seg) in segments.iter().enumerate() {
            if k > 1 && k < last {
                out.push_str(", ");
            }
            let mut at = seg.start;
            for (r, n) in params.iter().filter(|(r, _)| inside(r, seg)) {
                out.push_str(&sql[at..r.start]);
                let new = olds.iter().position(|o| o == n)? + 1;
                out.push_str(&format!("${new}"));
                at = r.end;
            }
            out.push_str(&sql[at..seg.end]);
        }
        Some((out, olds))
    }
}

/// A lexical token: what the row cutting needs to tell apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lexeme {
    Word,
    Open,
    Close,
    Comma,
    Semicolon,
    /// A string, a quoted identifier, `$n`, an operator, a number.
    Other,
}

/// The rows of a one-statement `INSERT ... VALUES (...), (...)` text;
/// `None` for any other text (a `WITH` before the `INSERT`, `INSERT ...
/// SELECT`, `DEFAULT VALUES`, a second statement, an unterminated string).
pub fn insert_rows(sql: &str) -> Option<InsertRows> {
    let tokens = lex(sql)?;
    let word = |t: &(Lexeme, Range<usize>), w: &str| {
        t.0 == Lexeme::Word && sql[t.1.clone()].eq_ignore_ascii_case(w)
    };
    if !tokens.first().is_some_and(|t| word(t, "insert")) {
        return None;
    }
    let mut depth = 0usize;
    let mut at = None;
    for (i, t) in tokens.iter().enumerate() {
        match t.0 {
            Lexeme::Open => depth += 1,
            Lexeme::Close => depth = depth.checked_sub(1)?,
            _ if depth == 0 && word(t, "values") => {
                at = Some(i + 1);
                break;
            }
            _ => {}
        }
    }
    let mut i = at?;
    let head_end = tokens.get(i).filter(|t| t.0 == Lexeme::Open)?.1.start;
    let mut rows = Vec::new();
    loop {
        let open = tokens.get(i).filter(|t| t.0 == Lexeme::Open)?;
        let mut depth = 0usize;
        let mut close = None;
        for (j, t) in tokens.iter().enumerate().skip(i) {
            match t.0 {
                Lexeme::Open => depth += 1,
                Lexeme::Close => {
                    depth -= 1;
                    if depth == 0 {
                        close = Some(j);
                        break;
                    }
                }
                _ => {}
            }
        }
        let close = close?;
        rows.push(open.1.start..tokens[close].1.end);
        let comma = tokens.get(close + 1).is_some_and(|t| t.0 == Lexeme::Comma);
        let next_open = tokens.get(close + 2).is_some_and(|t| t.0 == Lexeme::Open);
        if comma && next_open {
            i = close + 2;
            continue;
        }
        let tail_start = tokens[close].1.end;
        // One statement only: a `;` may end it, nothing may follow.
        let rest = &tokens[close + 1..];
        if let Some(p) = rest.iter().position(|t| t.0 == Lexeme::Semicolon) {
            if rest[p + 1..].iter().any(|t| t.0 != Lexeme::Semicolon) {
                return None;
            }
        }
        if rest.iter().any(|t| t.0 == Lexeme::Open) {
            let mut d = 0i64;
            for t in rest {
                match t.0 {
                    Lexeme::Open => d += 1,
                    Lexeme::Close => d -= 1,
                    _ => {}
                }
                if d < 0 {
                    return None;
                }
            }
        }
        return Some(InsertRows {
            head: 0..head_end,
            rows,
            tail: tail_start..sql.len(),
        });
    }
}

/// The text's tokens with their byte ranges, comments dropped; `None`
/// when a string, identifier or comment never ends.
pub(super) fn lex(sql: &str) -> Option<Vec<(Lexeme, Range<usize>)>> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let start = i;
        let lexeme = match c {
            b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => {
                i += 1;
                continue;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = b[i..]
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(b.len(), |p| i + p);
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 1;
                i += 2;
                while depth > 0 {
                    match (b.get(i), b.get(i + 1)) {
                        (None, _) => return None,
                        (Some(b'/'), Some(b'*')) => {
                            depth += 1;
                            i += 2;
                        }
                        (Some(b'*'), Some(b'/')) => {
                            depth -= 1;
                            i += 2;
                        }
                        _ => i += 1,
                    }
                }
                continue;
            }
            b'\'' => {
                let escapes = i > 0
                    && matches!(b[i - 1], b'e' | b'E')
                    && (i < 2 || !super::text::is_ident_byte(b[i - 2]));
                i = super::text::skip_quoted(b, i + 1, b'\'', escapes)?;
                Lexeme::Other
            }
            b'"' => {
                i = super::text::skip_quoted(b, i + 1, b'"', false)?;
                Lexeme::Other
            }
            b'$' if b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                Lexeme::Other
            }
            b'$' => {
                let tag_len = b[i + 1..]
                    .iter()
                    .position(|&c| !super::text::is_ident_byte(c))
                    .map_or(b.len() - i - 1, |p| p);
                if b.get(i + 1 + tag_len) == Some(&b'$') {
                    let tag = &b[i..i + tag_len + 2];
                    let body = i + tag.len();
                    let p = b[body..].windows(tag.len()).position(|w| w == tag)?;
                    i = body + p + tag.len();
                } else {
                    i += 1;
                }
                Lexeme::Other
            }
            b'(' => {
                i += 1;
                Lexeme::Open
            }
            b')' => {
                i += 1;
                Lexeme::Close
            }
            b',' => {
                i += 1;
                Lexeme::Comma
            }
            b';' => {
                i += 1;
                Lexeme::Semicolon
            }
            c if c.is_ascii_digit() => {
                // A number, with its fraction and exponent.
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_')
                {
                    i += 1;
                }
                Lexeme::Other
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                while i < b.len() && (super::text::is_ident_byte(b[i]) || b[i] == b'$') {
                    i += 1;
                }
                // `E'...'`, `U&'...'`, `B'...'`: the string is the next
                // token, scanned with the word's escapes in mind.
                Lexeme::Word
            }
            _ => {
                i += 1;
                Lexeme::Other
            }
        };
        out.push((lexeme, start..i));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows_of(sql: &str) -> Option<Vec<&str>> {
        insert_rows(sql).map(|r| r.rows.iter().map(|x| &sql[x.clone()]).collect())
    }

    #[test]
    fn cuts_rows_out() {
        let sql = "INSERT INTO t (k, v) VALUES (1, 'a,(b'), (2, f(3, 4)) , ($1, $$x)$$) \
                   ON CONFLICT (k) DO UPDATE SET v = excluded.v RETURNING k;";
        let r = insert_rows(sql).expect("rows");
        assert_eq!(
            rows_of(sql).unwrap(),
            vec!["(1, 'a,(b')", "(2, f(3, 4))", "($1, $$x)$$)"]
        );
        assert_eq!(&sql[r.head.clone()], "INSERT INTO t (k, v) VALUES ");
        assert_eq!(
            r.text_with(sql, &[2, 0]),
            "INSERT INTO t (k, v) VALUES ($1, $$x)$$), (1, 'a,(b') \
             ON CONFLICT (k) DO UPDATE SET v = excluded.v RETURNING k;"
        );
    }

    #[test]
    fn parameters_are_numbered_anew() {
        let sql = "INSERT INTO t (k, v) VALUES ($1, $2), ($3, '$4'), ($5, $2) RETURNING $6::int";
        let r = insert_rows(sql).expect("rows");
        assert_eq!(
            r.text_with_params(sql, &[1, 2]).expect("text"),
            (
                "INSERT INTO t (k, v) VALUES ($2, '$4'), ($3, $1) RETURNING $4::int".to_string(),
                vec![2, 3, 5, 6]
            )
        );
        assert_eq!(
            r.text_with_params(sql, &[0]).expect("text").0,
            "INSERT INTO t (k, v) VALUES ($1, $2) RETURNING $3::int"
        );
    }

    #[test]
    fn comments_and_quotes_do_not_count() {
        let sql = "insert /* ( */ into \"t(\" (k) values -- ),(\n (E'\\')'), ('x')";
        assert_eq!(rows_of(sql).unwrap(), vec!["(E'\\')')", "('x')"]);
    }

    #[test]
    fn other_texts_have_no_rows() {
        for sql in [
            "SELECT 1",
            "WITH x AS (SELECT 1) INSERT INTO t (k) VALUES (1), (2)",
            "INSERT INTO t (k) SELECT k FROM u",
            "INSERT INTO t DEFAULT VALUES",
            "INSERT INTO t (k) VALUES (1), (2); DELETE FROM t",
            "INSERT INTO t (k) VALUES (1), ('2",
            "INSERT INTO t (k) VALUES (1), (2",
        ] {
            assert_eq!(insert_rows(sql), None, "{sql}");
        }
        assert_eq!(
            rows_of("INSERT INTO t (k) VALUES (1), (2);;").unwrap(),
            vec!["(1)", "(2)"]
        );
    }
}
