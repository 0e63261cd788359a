//! Token-level work: splitting a text into statements, the shard key in
//! comments, `SET shardline.shard_key`, the nesting bound, and the
//! fallback for statements the parser rejects.

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer, Word};

use super::Kind;

/// The most operators a statement may chain (see [`nesting`]). The parser
/// builds `a OR b OR ...` as a left-deep tree in a loop, with no depth
/// limit, and dropping that tree recurses once per level: 10,000 levels
/// drop within 1 MiB of stack even in debug builds. Real statements stay
/// far below (an `OR` of 1,000 equalities counts 2,000).
pub(super) const MAX_NESTING: usize = 10_000;

/// The setting that names a session's shard key.
const SETTING: &str = "shardline.shard_key";

/// Splits a text's tokens at top-level semicolons into statements,
/// leaving out empty ones (only whitespace and comments).
pub(super) fn split(tokens: Vec<TokenWithSpan>) -> Vec<Vec<TokenWithSpan>> {
    let mut statements = Vec::new();
    let mut current = Vec::new();
    for token in tokens {
        if token.token == Token::SemiColon {
            finish(&mut statements, &mut current);
        } else {
            current.push(token);
        }
    }
    finish(&mut statements, &mut current);
    statements
}

/// Moves `current` into `statements` unless it is empty.
fn finish(statements: &mut Vec<Vec<TokenWithSpan>>, current: &mut Vec<TokenWithSpan>) {
    if current.iter().any(|t| !is_blank(&t.token)) {
        statements.push(std::mem::take(current));
    } else {
        current.clear();
    }
}

/// Whitespace, comments and the end marker.
fn is_blank(token: &Token) -> bool {
    matches!(token, Token::Whitespace(_) | Token::EOF)
}

/// The tokens of the text's `index`th statement, tokenized again: the
/// parser consumes the first tokenization, and the paths that need tokens
/// after parsing (utility statements, parse errors) are rare.
pub(super) fn statement_tokens(sql: &str, index: usize) -> Option<Vec<TokenWithSpan>> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize_with_location()
        .ok()?;
    split(tokens).into_iter().nth(index)
}

/// The tokens that are not whitespace or comments.
fn solid(tokens: &[TokenWithSpan]) -> impl Iterator<Item = &Token> {
    tokens.iter().map(|t| &t.token).filter(|t| !is_blank(t))
}

/// An unquoted keyword.
fn keyword(token: &Token) -> Option<Keyword> {
    match token {
        Token::Word(Word {
            quote_style: None,
            keyword,
            ..
        }) => Some(*keyword),
        _ => None,
    }
}

/// A word as PostgreSQL folds it: unquoted words in lower case.
fn folded(word: &Word) -> String {
    match word.quote_style {
        None => word.value.to_ascii_lowercase(),
        Some(_) => word.value.clone(),
    }
}

/// Keywords that join two expressions (or queries) into a deeper tree.
const OPERATOR_WORDS: [Keyword; 18] = [
    Keyword::AND,
    Keyword::OR,
    Keyword::NOT,
    Keyword::IS,
    Keyword::IN,
    Keyword::LIKE,
    Keyword::ILIKE,
    Keyword::SIMILAR,
    Keyword::BETWEEN,
    Keyword::UNION,
    Keyword::EXCEPT,
    Keyword::INTERSECT,
    Keyword::JOIN,
    Keyword::COLLATE,
    Keyword::AT,
    Keyword::OVERLAPS,
    Keyword::ESCAPE,
    Keyword::OPERATOR,
];

/// An upper bound on how deep the statement's syntax tree can get: the
/// brackets open at each token plus the operators seen since the last
/// comma at each open level. Errs high (an operator binding tighter than
/// its neighbours counts too), which only matters past [`MAX_NESTING`].
pub(super) fn nesting(tokens: &[TokenWithSpan]) -> usize {
    // Operators seen at each open level, and their sum.
    let mut levels: Vec<usize> = vec![0];
    let mut operators = 0usize;
    let mut deepest = 0usize;
    for token in solid(tokens) {
        match token {
            Token::LParen | Token::LBracket => levels.push(0),
            Token::RParen | Token::RBracket => {
                if levels.len() > 1 {
                    operators -= levels.pop().unwrap_or(0);
                }
            }
            Token::Comma => {
                if let Some(level) = levels.last_mut() {
                    operators -= *level;
                    *level = 0;
                }
            }
            Token::Word(word) => {
                if word.quote_style.is_none() && OPERATOR_WORDS.contains(&word.keyword) {
                    bump(&mut levels, &mut operators);
                }
            }
            Token::Number(..)
            | Token::Placeholder(_)
            | Token::Period
            | Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::DollarQuotedString(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::HexStringLiteral(_) => {}
            _ => bump(&mut levels, &mut operators),
        }
        deepest = deepest.max(levels.len() + operators);
    }
    deepest
}

/// Counts an operator at the innermost open level.
fn bump(levels: &mut [usize], operators: &mut usize) {
    if let Some(level) = levels.last_mut() {
        *level += 1;
        *operators += 1;
    }
}

/// How many `SELECT` keywords the statement holds: each is a `SELECT`
/// the walk must meet, or it missed part of the statement.
pub(super) fn select_words(tokens: &[TokenWithSpan]) -> usize {
    solid(tokens)
        .filter(|t| keyword(t) == Some(Keyword::SELECT))
        .count()
}

/// Recognises `SET [SESSION | LOCAL] shardline.shard_key { = | TO }
/// value` and `RESET shardline.shard_key` from tokens, so that every
/// spelling PostgreSQL accepts is seen whatever the parser makes of it.
/// `None` for any other statement.
pub(super) fn shard_key_setting(tokens: &[TokenWithSpan]) -> Option<Kind> {
    let mut rest = solid(tokens).peekable();
    let first = keyword(rest.next()?)?;
    if first != Keyword::SET && first != Keyword::RESET {
        return None;
    }
    let mut local = false;
    if first == Keyword::SET {
        match rest.peek().and_then(|t| keyword(t)) {
            Some(Keyword::LOCAL) => {
                local = true;
                rest.next();
            }
            Some(Keyword::SESSION) => {
                rest.next();
            }
            _ => {}
        }
    }
    if !setting_name(&mut rest)? {
        return None;
    }
    if first == Keyword::RESET {
        return rest.next().is_none().then_some(Kind::SetShardKey {
            value: None,
            local: false,
        });
    }
    match rest.next()? {
        Token::Eq => {}
        token if keyword(token) == Some(Keyword::TO) => {}
        _ => return None,
    }
    let mut values = Vec::new();
    loop {
        let value = match rest.next()? {
            Token::Word(word) if word.quote_style.is_none() && word.keyword == Keyword::DEFAULT => {
                None
            }
            Token::Word(word) => Some(folded(word)),
            Token::Minus => match rest.next()? {
                Token::Number(n, _) => Some(format!("-{n}")),
                _ => return None,
            },
            Token::Plus => match rest.next()? {
                Token::Number(n, _) => Some(n.clone()),
                _ => return None,
            },
            token => Some(string_value(token)?),
        };
        values.push(value);
        match rest.next() {
            None => break,
            Some(Token::Comma) => {}
            Some(_) => return None,
        }
    }
    let value = match values.as_slice() {
        [None] => None,
        // PostgreSQL flattens a list given to a custom setting into one
        // string.
        values => Some(
            values
                .iter()
                .cloned()
                .collect::<Option<Vec<String>>>()?
                .join(", "),
        ),
    };
    Some(Kind::SetShardKey { value, local })
}

/// Reads `shardline.shard_key` (or `"shardline"."shard_key"`, or
/// `"shardline.shard_key"`); `Some(false)` for another name.
fn setting_name<'a>(rest: &mut impl Iterator<Item = &'a Token>) -> Option<bool> {
    let Token::Word(first) = rest.next()? else {
        return Some(false);
    };
    let first = folded(first);
    if first == SETTING {
        return Some(true);
    }
    if first != "shardline" || rest.next()? != &Token::Period {
        return Some(false);
    }
    let Token::Word(second) = rest.next()? else {
        return Some(false);
    };
    Some(folded(second) == "shard_key")
}

/// The text of a string or number constant token.
pub(super) fn string_value(token: &Token) -> Option<String> {
    match token {
        Token::SingleQuotedString(s)
        | Token::EscapedStringLiteral(s)
        | Token::UnicodeStringLiteral(s)
        | Token::NationalStringLiteral(s) => Some(s.clone()),
        Token::DollarQuotedString(s) => Some(s.value.clone()),
        Token::Number(n, _) => Some(n.clone()),
        _ => None,
    }
}

/// Whether any word of the statement is a sharded table's name: how
/// statements the walk does not follow (DDL, ...) are judged. Errs
/// towards yes (a column named like a sharded table counts).
pub(super) fn names_sharded(
    tokens: &[TokenWithSpan],
    shard_key_of: &dyn Fn(&str) -> Option<String>,
) -> bool {
    solid(tokens).any(|t| match t {
        Token::Word(word) => shard_key_of(&folded(word)).is_some(),
        _ => false,
    })
}

/// What the tokens of a statement the parser rejected still tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Fallback {
    /// It leads with `SELECT`, `WITH`, `VALUES`, `TABLE` or `SHOW` and has
    /// no write keyword (`INSERT`, `UPDATE`, `DELETE`, `MERGE`, `INTO`) or
    /// row lock (`FOR UPDATE`, `FOR SHARE`, ...).
    pub read: bool,
    /// Every relation named after `FROM`, `JOIN`, `TABLE`, `USING` or a
    /// comma in a `FROM` list is a system catalog (see [`is_system`]).
    pub catalog_only: bool,
}

/// Scans a rejected statement's tokens for [`Fallback`]. The scan errs
/// towards "not catalog-only": a CTE's name counts as a relation.
pub(super) fn fallback(tokens: &[TokenWithSpan]) -> Fallback {
    let solid: Vec<&Token> = solid(tokens).collect();
    let read = read_like(&solid);
    // Per open bracket level: whether it holds a query (a `SELECT` seen,
    // or the items of a nested join), and whether it is in a FROM list.
    let mut levels: Vec<(bool, bool)> = vec![(false, false)];
    let mut expect_relation = false;
    let mut catalog_only = true;
    let mut previous = None;
    let mut i = 0;
    while i < solid.len() {
        let token = solid[i];
        i += 1;
        let word = keyword(token);
        if expect_relation {
            expect_relation = false;
            match token {
                _ if matches!(word, Some(Keyword::LATERAL | Keyword::ONLY)) => {
                    expect_relation = true;
                    continue;
                }
                // A subquery: read on as usual.
                _ if matches!(
                    word,
                    Some(Keyword::SELECT | Keyword::WITH | Keyword::VALUES | Keyword::TABLE)
                ) => {}
                // A nested join (or a subquery): its items are relations too.
                Token::LParen => {
                    levels.push((true, true));
                    expect_relation = true;
                    continue;
                }
                Token::Word(first) => {
                    let mut name = vec![folded(first)];
                    while solid.get(i) == Some(&&Token::Period) {
                        match solid.get(i + 1) {
                            Some(Token::Word(part)) => {
                                name.push(folded(part));
                                i += 2;
                            }
                            _ => break,
                        }
                    }
                    // A set-returning function, not a relation.
                    if solid.get(i) != Some(&&Token::LParen) {
                        let table = name.last().map(String::as_str).unwrap_or_default();
                        let schema = name.len().checked_sub(2).map(|s| name[s].as_str());
                        catalog_only &= is_system(schema, table);
                    }
                    continue;
                }
                _ => {}
            }
        }
        let level = levels.last().copied().unwrap_or_default();
        match token {
            Token::LParen => levels.push((false, false)),
            Token::RParen => {
                if levels.len() > 1 {
                    levels.pop();
                }
            }
            Token::Comma => expect_relation = level.1,
            _ => match word {
                Some(Keyword::SELECT) => set_last(&mut levels, (true, false)),
                // Not `IS DISTINCT FROM`, nor `EXTRACT(x FROM y)` (no query
                // at that level).
                Some(Keyword::FROM) if level.0 && previous != Some(Keyword::DISTINCT) => {
                    set_last(&mut levels, (true, true));
                    expect_relation = true;
                }
                Some(Keyword::JOIN | Keyword::TABLE) => expect_relation = true,
                // `DELETE ... USING t`, not `JOIN ... USING (col)`.
                Some(Keyword::USING) => expect_relation = solid.get(i) != Some(&&Token::LParen),
                Some(
                    Keyword::WHERE
                    | Keyword::GROUP
                    | Keyword::ORDER
                    | Keyword::HAVING
                    | Keyword::LIMIT
                    | Keyword::OFFSET
                    | Keyword::UNION
                    | Keyword::EXCEPT
                    | Keyword::INTERSECT
                    | Keyword::WINDOW
                    | Keyword::FETCH
                    | Keyword::FOR
                    | Keyword::RETURNING,
                ) => set_last(&mut levels, (level.0, false)),
                _ => {}
            },
        }
        previous = word;
    }
    Fallback { read, catalog_only }
}

/// Sets the innermost level's flags.
fn set_last(levels: &mut [(bool, bool)], value: (bool, bool)) {
    if let Some(last) = levels.last_mut() {
        *last = value;
    }
}

/// Whether a statement's tokens read as a read (see [`Fallback::read`]).
fn read_like(solid: &[&Token]) -> bool {
    let lead = solid.first().and_then(|t| keyword(t));
    if !matches!(
        lead,
        Some(Keyword::SELECT | Keyword::WITH | Keyword::VALUES | Keyword::TABLE | Keyword::SHOW)
    ) {
        return false;
    }
    let mut after_for = false;
    for token in solid {
        let word = keyword(token);
        if matches!(
            word,
            Some(
                Keyword::INSERT
                    | Keyword::UPDATE
                    | Keyword::DELETE
                    | Keyword::MERGE
                    | Keyword::INTO
            )
        ) {
            return false;
        }
        if after_for && matches!(word, Some(Keyword::NO | Keyword::SHARE | Keyword::KEY)) {
            return false;
        }
        after_for = word == Some(Keyword::FOR);
    }
    true
}

/// Whether a relation is a system catalog: in schema `pg_catalog`,
/// `information_schema` or `pg_toast`, or unqualified and named `pg_*`
/// (PostgreSQL searches `pg_catalog` first).
pub(super) fn is_system(schema: Option<&str>, table: &str) -> bool {
    match schema {
        Some(schema) => matches!(schema, "pg_catalog" | "information_schema" | "pg_toast"),
        None => table.starts_with("pg_"),
    }
}

/// Finds the shard key in the text's comments (see
/// [`super::comment_key`]). Scans bytes: every delimiter is ASCII, so
/// slicing at them keeps UTF-8 intact.
pub(super) fn comment_key(sql: &str) -> Option<String> {
    let b = sql.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\'' => {
                let escapes =
                    i > 0 && matches!(b[i - 1], b'e' | b'E') && (i < 2 || !is_ident_byte(b[i - 2]));
                i = skip_quoted(b, i + 1, b'\'', escapes)?;
            }
            b'"' => i = skip_quoted(b, i + 1, b'"', false)?,
            b'$' if i == 0 || !is_ident_byte(b[i - 1]) => i = skip_dollar(b, i),
            b'-' if b.get(i + 1) == Some(&b'-') => {
                let end = b[i..]
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(b.len(), |p| i + p);
                if let Some(key) = sql.get(i + 2..end).and_then(key_in_comment) {
                    return Some(key);
                }
                i = end;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                // Block comments nest in PostgreSQL.
                let start = i + 2;
                let mut depth = 1;
                let mut j = start;
                while depth > 0 {
                    match (b.get(j), b.get(j + 1)) {
                        (None, _) => return None,
                        (Some(b'/'), Some(b'*')) => {
                            depth += 1;
                            j += 2;
                        }
                        (Some(b'*'), Some(b'/')) => {
                            depth -= 1;
                            j += 2;
                        }
                        _ => j += 1,
                    }
                }
                if let Some(key) = sql.get(start..j - 2).and_then(key_in_comment) {
                    return Some(key);
                }
                i = j;
            }
            _ => i += 1,
        }
    }
    None
}

/// Whether a byte can continue an identifier.
pub(super) fn is_ident_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80
}

/// The index past a quoted string or identifier whose body starts at
/// `i`; `None` when it never ends.
pub(super) fn skip_quoted(
    b: &[u8],
    mut i: usize,
    quote: u8,
    backslash_escapes: bool,
) -> Option<usize> {
    while i < b.len() {
        let c = b[i];
        if backslash_escapes && c == b'\\' {
            i += 2;
        } else if c == quote {
            if b.get(i + 1) == Some(&quote) {
                i += 2;
            } else {
                return Some(i + 1);
            }
        } else {
            i += 1;
        }
    }
    None
}

/// The index past a dollar-quoted string starting at `i` (`$tag$ ...
/// $tag$`), or past the `$` when none starts there (`$1`); the end of the
/// text when it never ends.
fn skip_dollar(b: &[u8], i: usize) -> usize {
    let tag_end = b[i + 1..]
        .iter()
        .position(|&c| !(c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80))
        .map(|p| i + 1 + p);
    let Some(tag_end) = tag_end else {
        return i + 1;
    };
    if b[tag_end] != b'$' || b.get(i + 1).is_some_and(|c| c.is_ascii_digit()) {
        return i + 1;
    }
    let tag = &b[i..=tag_end];
    let body = tag_end + 1;
    b[body..]
        .windows(tag.len())
        .position(|w| w == tag)
        .map_or(b.len(), |p| body + p + tag.len())
}

/// The value given to `shardline.shard_key` in a comment's body.
fn key_in_comment(body: &str) -> Option<String> {
    let b = body.as_bytes();
    let name = SETTING.as_bytes();
    let mut from = 0;
    while from + name.len() <= b.len() {
        let at = from
            + b[from..]
                .windows(name.len())
                .position(|w| w.eq_ignore_ascii_case(name))?;
        from = at + 1;
        if at > 0 && (is_ident_byte(b[at - 1]) || b[at - 1] == b'.') {
            continue;
        }
        let mut i = at + name.len();
        while b.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        if b.get(i) != Some(&b'=') {
            continue;
        }
        i += 1;
        while b.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        let value = match b.get(i) {
            Some(&quote @ (b'\'' | b'"')) => {
                let end = skip_quoted(b, i + 1, quote, false)?;
                let doubled = if quote == b'\'' { "''" } else { "\"\"" };
                body.get(i + 1..end - 1)
                    .map(|v| v.replace(doubled, &doubled[..1]))
            }
            Some(_) => {
                let end = b[i..]
                    .iter()
                    .position(|c| c.is_ascii_whitespace() || matches!(c, b',' | b';' | b')'))
                    .map_or(b.len(), |p| i + p);
                body.get(i..end).map(str::to_string)
            }
            None => None,
        };
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use crate::wire::analyze::comment_key;

    #[test]
    fn comment_keys() {
        let cases = [
            ("/* shardline.shard_key='42' */ SELECT 1", Some("42")),
            ("SELECT 1 /*shardline.shard_key = 42*/", Some("42")),
            ("SELECT 1 -- SHARDLINE.SHARD_KEY =  abc\n", Some("abc")),
            (
                "/* app='x',shardline.shard_key='a''b',route='y' */",
                Some("a'b"),
            ),
            ("/* shardline.shard_key=\"q\" */", Some("q")),
            ("/* outer /* inner */ shardline.shard_key=7 */", Some("7")),
            (
                "/* shardline.shard_key= */ /* shardline.shard_key=8 */",
                Some("8"),
            ),
            ("/* shardline.shard_key=1; x */", Some("1")),
            ("/* shardline.shard_key */", None),
            ("/* xshardline.shard_key=1 */", None),
            ("SELECT '/* shardline.shard_key=1 */'", None),
            ("SELECT E'\\' /* shardline.shard_key=1 */'", None),
            ("SELECT \"/* shardline.shard_key=1 */\"", None),
            ("SELECT $x$ /* shardline.shard_key=1 */ $x$", None),
            ("SELECT $1 /* shardline.shard_key=2 */", Some("2")),
            ("SELECT 1 /* shardline.shard_key=3", None),
            ("SELECT 1", None),
            ("/* ünïcode */ -- shardline.shard_key = 'é'\n", Some("é")),
        ];
        for (sql, key) in cases {
            assert_eq!(comment_key(sql).as_deref(), key, "{sql}");
        }
    }
}
