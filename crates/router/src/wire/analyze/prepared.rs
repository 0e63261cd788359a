//! SQL-level prepared statements (`PREPARE`, `EXECUTE`, `DEALLOCATE`)
//! cut into the parts the wire session needs to keep them per client and
//! run them on any pooled server session under a name of the router's.
//! A lexical scan of a text the parser has accepted as one statement.

use std::ops::Range;

use super::rows::{lex, Lexeme};

/// A `PREPARE`, `EXECUTE` or `DEALLOCATE` statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PreparedSql {
    /// `PREPARE name [(types)] AS statement`.
    Prepare {
        /// The name as PostgreSQL folds it.
        name: String,
        /// After the name: `[(types)] AS statement`.
        rest: Range<usize>,
        /// The prepared statement's text.
        statement: Range<usize>,
    },
    /// `EXECUTE name [(args)]`.
    Execute {
        name: String,
        /// Each argument's value when it is a literal (a number, a
        /// string, either with a cast), else `None`.
        args: Vec<Option<String>>,
        /// After the name: `[(args)]`.
        rest: Range<usize>,
    },
    /// `DEALLOCATE [PREPARE] name | ALL`; `None` for `ALL`.
    Deallocate { name: Option<String> },
}

/// The prepared-statement command `sql` is, if it is one.
pub fn find(sql: &str) -> Option<PreparedSql> {
    let tokens = lex(sql)?;
    let mut solid = tokens.iter().filter(|t| t.0 != Lexeme::Semicolon);
    let word = |t: &(Lexeme, Range<usize>), w: &str| {
        t.0 == Lexeme::Word && sql[t.1.clone()].eq_ignore_ascii_case(w)
    };
    let first = solid.next()?;
    let verb = ["prepare", "execute", "deallocate"]
        .into_iter()
        .find(|w| word(first, w))?;
    let mut name_token = solid.next()?;
    if verb == "deallocate" && word(name_token, "prepare") {
        name_token = solid.next()?;
    }
    let name = name_of(sql, name_token)?;
    // The text after the name, without a trailing `;`.
    let end = tokens
        .iter()
        .rev()
        .find(|t| t.0 != Lexeme::Semicolon)
        .map_or(sql.len(), |t| t.1.end);
    let rest = name_token.1.end..end.max(name_token.1.end);
    match verb {
        "prepare" => {
            let mut depth = 0usize;
            let at = tokens.iter().position(|t| {
                match t.0 {
                    Lexeme::Open => depth += 1,
                    Lexeme::Close => depth = depth.saturating_sub(1),
                    _ => {}
                }
                depth == 0 && t.1.start >= rest.start && word(t, "as")
            })?;
            let start = tokens.get(at + 1)?.1.start;
            Some(PreparedSql::Prepare {
                name,
                rest,
                statement: start..end,
            })
        }
        "execute" => Some(PreparedSql::Execute {
            name,
            args: args(sql, &tokens, rest.clone())?,
            rest,
        }),
        _ => {
            if solid.next().is_some() {
                return None;
            }
            let all = name_token.0 == Lexeme::Word && name == "all";
            Some(PreparedSql::Deallocate {
                name: (!all).then_some(name),
            })
        }
    }
}

/// An identifier token as PostgreSQL folds it.
fn name_of(sql: &str, t: &(Lexeme, Range<usize>)) -> Option<String> {
    let text = &sql[t.1.clone()];
    match t.0 {
        Lexeme::Word => Some(text.to_ascii_lowercase()),
        Lexeme::Other if text.len() >= 2 && text.starts_with('"') && text.ends_with('"') => {
            Some(text[1..text.len() - 1].replace("\"\"", "\""))
        }
        _ => None,
    }
}

/// The literal values of `EXECUTE`'s arguments in `rest` (`(1, 'a',
/// '5'::bigint, now())`).
fn args(
    sql: &str,
    tokens: &[(Lexeme, Range<usize>)],
    rest: Range<usize>,
) -> Option<Vec<Option<String>>> {
    let inside: Vec<&(Lexeme, Range<usize>)> = tokens
        .iter()
        .filter(|t| t.1.start >= rest.start && t.1.end <= rest.end)
        .collect();
    let Some((first, body)) = inside.split_first() else {
        return Some(Vec::new());
    };
    if first.0 != Lexeme::Open || body.last()?.0 != Lexeme::Close {
        return None;
    }
    let body = &body[..body.len() - 1];
    let mut out = Vec::new();
    let mut arg: Vec<&(Lexeme, Range<usize>)> = Vec::new();
    let mut depth = 0usize;
    for t in body {
        match t.0 {
            Lexeme::Open => depth += 1,
            Lexeme::Close => depth = depth.saturating_sub(1),
            Lexeme::Comma if depth == 0 => {
                out.push(literal(sql, &arg));
                arg.clear();
                continue;
            }
            _ => {}
        }
        arg.push(t);
    }
    if !arg.is_empty() || !out.is_empty() {
        out.push(literal(sql, &arg));
    }
    Some(out)
}

/// A literal's value: `42`, `-5`, `'a''b'`, each optionally followed by
/// `::type`.
fn literal(sql: &str, arg: &[&(Lexeme, Range<usize>)]) -> Option<String> {
    let text = |t: &(Lexeme, Range<usize>)| &sql[t.1.clone()];
    let (value, cast) = match arg {
        [sign, v, cast @ ..]
            if text(sign) == "-" && text(v).starts_with(|c: char| c.is_ascii_digit()) =>
        {
            (format!("-{}", text(v)), cast)
        }
        [v, cast @ ..] => {
            let t = text(v);
            if t.starts_with('\'') && t.len() >= 2 && t.ends_with('\'') {
                (t[1..t.len() - 1].replace("''", "'"), cast)
            } else if v.0 == Lexeme::Other && t.starts_with(|c: char| c.is_ascii_digit()) {
                (t.to_string(), cast)
            } else {
                return None;
            }
        }
        [] => return None,
    };
    // Only `::name` may follow (the lexer gives `:` `:` `name`).
    match cast {
        [] => Some(value),
        [a, b, ty] if text(a) == ":" && text(b) == ":" && ty.0 == Lexeme::Word => Some(value),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepare_execute_and_deallocate() {
        let sql = "PREPARE \"Get\" (bigint, text) AS SELECT v FROM items WHERE id = $1;";
        let Some(PreparedSql::Prepare {
            name,
            rest,
            statement,
        }) = find(sql)
        else {
            panic!("{:?}", find(sql));
        };
        assert_eq!(name, "Get");
        assert_eq!(
            &sql[rest],
            " (bigint, text) AS SELECT v FROM items WHERE id = $1"
        );
        assert_eq!(&sql[statement], "SELECT v FROM items WHERE id = $1");
        let sql = "execute get(42, 'a''b', '7'::bigint, -3, now(), x)";
        assert_eq!(
            find(sql),
            Some(PreparedSql::Execute {
                name: "get".into(),
                args: vec![
                    Some("42".into()),
                    Some("a'b".into()),
                    Some("7".into()),
                    Some("-3".into()),
                    None,
                    None
                ],
                rest: 11..sql.len(),
            })
        );
        assert_eq!(
            find("EXECUTE get"),
            Some(PreparedSql::Execute {
                name: "get".into(),
                args: vec![],
                rest: 11..11
            })
        );
        assert_eq!(
            find("DEALLOCATE PREPARE get"),
            Some(PreparedSql::Deallocate {
                name: Some("get".into())
            })
        );
        assert_eq!(
            find("deallocate all;"),
            Some(PreparedSql::Deallocate { name: None })
        );
        assert_eq!(find("SELECT 1"), None);
    }
}
