//! Texts that differ only in their shard keys share one analysis.
//!
//! A client of the simple protocol (psql scripts, `pgbench -M simple`,
//! drivers that interpolate values) sends each key as a constant in the
//! text, so every text is new to a cache by exact text and is parsed
//! again (9-22 µs a statement). [`shape`] reads a text's constants with a
//! small scanner and gives the text with each one replaced by a NUL, which
//! no client text holds (the protocol's strings end at one): its shape.
//!
//! An analysis whose keys are constants of its text, each found at one
//! place only, becomes a [`Template`]: the places of the keys. Another
//! text of the same shape gets the analysis with its own keys put in
//! ([`Template::instantiate`]). The other constants are free to differ
//! when the analysis does not depend on them (the values of an `INSERT`
//! or an `UPDATE ... SET`); where it may (`ORDER BY 1`, `LIMIT 10`),
//! they are fixed: a text that differs there is analysed afresh. A
//! template is made only after it was checked on a second text, the
//! first with every constant changed to a value far from any it held:
//! that text's own analysis must equal the template's answer for it.
//! Failing that, the other constants are fixed and the check is made
//! again with only the keys changed; failing again, there is no template
//! ([`Template::new`]). The check also catches a key that only looks like
//! one of the constants (a `TRUE` key beside a `'true'` string).
//!
//! The scanner gives up (no shape: the text is cached as itself) on
//! anything it cannot read exactly as PostgreSQL does: dollar quoting,
//! `E''`, `U&''`, `B''`, `X''` and `N''` strings, backslashes in strings,
//! numbers run into words, unterminated quotes or comments, a NUL.

use super::{Analysis, KeyRef, Kind};

/// A text's constants taken out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    /// The text with each constant replaced by a NUL.
    pub key: String,
    /// The constants in order: a string's value (quotes taken off,
    /// doubled quotes made one) or a number's text.
    pub constants: Vec<Constant>,
}

/// One constant of a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constant {
    pub value: String,
    /// A quoted string (else a number).
    pub quoted: bool,
}

/// The shape of `sql`, or `None` when the scanner cannot be sure of it.
pub fn shape(sql: &str) -> Option<Shape> {
    if sql.contains('\0') {
        return None;
    }
    let b = sql.as_bytes();
    let mut key = String::with_capacity(sql.len());
    let mut constants = Vec::new();
    // `sql[copied..i]` is still to be copied into `key` as it is.
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        let after_word = i > 0 && is_word(b[i - 1]);
        let after_dot = i > 0 && b[i - 1] == b'.';
        match b[i] {
            b'\'' => {
                // `E'..'`, `B'..'`, `X'..'`, `N'..'`, `U&'..'`: not plain.
                if after_word || (i > 0 && b[i - 1] == b'&') {
                    return None;
                }
                let (value, end) = quoted(sql, i, b'\'')?;
                if value.contains('\\') {
                    return None;
                }
                key.push_str(&sql[copied..i]);
                key.push('\0');
                constants.push(Constant {
                    value,
                    quoted: true,
                });
                i = end;
                copied = i;
            }
            b'"' => i = quoted(sql, i, b'"')?.1,
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = sql[i..].find('\n').map_or(b.len(), |n| i + n + 1);
            }
            b'/' if b.get(i + 1) == Some(&b'*') => i = block_comment_end(b, i)?,
            b'$' if !after_word => {
                // `$1`: a parameter, kept. Anything else: dollar quoting.
                if !b.get(i + 1).is_some_and(u8::is_ascii_digit) {
                    return None;
                }
                i += 1;
                while b.get(i).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                }
            }
            b'0'..=b'9' if !after_word && !after_dot => {
                let end = number_end(b, i)?;
                key.push_str(&sql[copied..i]);
                key.push('\0');
                constants.push(Constant {
                    value: sql[i..end].to_string(),
                    quoted: false,
                });
                i = end;
                copied = i;
            }
            _ => i += 1,
        }
    }
    key.push_str(&sql[copied..]);
    Some(Shape { key, constants })
}

/// Whether `c` continues an identifier or keyword (bytes of non-ASCII
/// characters do, as in PostgreSQL's lexer).
fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

/// The value of the quoted run opening at `start` (quote `q`, doubled
/// inside), and the index after its closing quote.
fn quoted(sql: &str, start: usize, q: u8) -> Option<(String, usize)> {
    let b = sql.as_bytes();
    let mut value = String::new();
    let mut from = start + 1;
    loop {
        let close = from + b[from..].iter().position(|&c| c == q)?;
        if b.get(close + 1) == Some(&q) {
            value.push_str(&sql[from..=close]);
            from = close + 2;
        } else {
            value.push_str(&sql[from..close]);
            return Some((value, close + 1));
        }
    }
}

/// The index after the (nested) block comment opening at `start`.
fn block_comment_end(b: &[u8], start: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = start;
    while i + 1 < b.len() {
        match (b[i], b[i + 1]) {
            (b'/', b'*') => {
                depth += 1;
                i += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// The index after the number starting at `start`: digits, an optional
/// fraction, an optional exponent. `None` when a word or a dot follows
/// (`1abc`, `0x1F`, `1_000`, `1.2.3`): not read here.
fn number_end(b: &[u8], start: usize) -> Option<usize> {
    let digits = |mut i: usize| {
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        i
    };
    let mut i = digits(start);
    if b.get(i) == Some(&b'.') {
        i = digits(i + 1);
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        let mut j = i + 1;
        if matches!(b.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        if !b.get(j).is_some_and(u8::is_ascii_digit) {
            return None;
        }
        i = digits(j);
    }
    if b.get(i).is_some_and(|&c| is_word(c) || c == b'.') {
        return None;
    }
    Some(i)
}

/// Where an analysis' keys are among its text's constants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// For each of [`Analysis::keys`]: the constant it is, or `None` for a
    /// parameter (`$n`, the same in every text).
    keys: Vec<Option<usize>>,
    /// The same for [`Analysis::insert_row_keys`].
    row_keys: Vec<Option<usize>>,
    /// The constants that are no key, by index, with their values, when
    /// a text of the shape must have the same (empty when the template
    /// was checked with them changed: then they are free).
    fixed: Vec<(usize, String)>,
    /// Whether a key is a quoted string: the text's keyword guard
    /// ([`Analysis::guard_changes_session`]) is then read again, since a
    /// string could hold any word.
    quoted_keys: bool,
    /// The same for a quoted constant that is free (neither a key nor
    /// fixed).
    quoted_free: bool,
}

impl Template {
    /// The template of `analysis` (of the text of shape `shape`), checked
    /// on a second text whose keys all differ: `analyze` must give for it
    /// what the template gives. `None` when the analysis cannot be one:
    /// not all reads and writes, a `COPY`, `PREPARE`, a multi-row
    /// `INSERT` split by text positions, a parse error, no key that is a
    /// constant, a key found at more than one place or at none.
    pub fn new(
        analysis: &Analysis,
        shape: &Shape,
        analyze: &dyn Fn(&str) -> Analysis,
    ) -> Option<Template> {
        let a = analysis;
        if a.parse_error.is_some()
            || a.copy.is_some()
            || a.prepared.is_some()
            || a.insert_rows.is_some()
            || !a
                .parts
                .iter()
                .all(|k| matches!(k, Kind::Read | Kind::Write))
        {
            return None;
        }
        let place = |k: &KeyRef| -> Option<Option<usize>> {
            match k {
                KeyRef::Param(_) => Some(None),
                KeyRef::Literal(v) => {
                    let mut at = shape
                        .constants
                        .iter()
                        .enumerate()
                        .filter(|(_, c)| c.value == *v)
                        .map(|(i, _)| i);
                    let first = at.next()?;
                    at.next().is_none().then_some(Some(first))
                }
            }
        };
        let keys = a.keys.iter().map(place).collect::<Option<Vec<_>>>()?;
        let row_keys = a
            .insert_row_keys
            .iter()
            .map(place)
            .collect::<Option<Vec<_>>>()?;
        let key_at: Vec<bool> = (0..shape.constants.len())
            .map(|i| keys.contains(&Some(i)) || row_keys.contains(&Some(i)))
            .collect();
        let is_key = |i: usize| key_at[i];
        if !key_at.contains(&true) {
            return None;
        }
        let others: Vec<usize> = (0..shape.constants.len()).filter(|&i| !is_key(i)).collect();
        let quoted_keys =
            (0..shape.constants.len()).any(|i| is_key(i) && shape.constants[i].quoted);
        let mut template = Template {
            keys,
            row_keys,
            fixed: Vec::new(),
            quoted_keys,
            quoted_free: others.iter().any(|&i| shape.constants[i].quoted),
        };
        // First try: the other constants free too, checked on a text with
        // every constant changed. A constant the analysis depends on
        // (`ORDER BY 1`, `LIMIT 10`) shows there, since the probe's
        // values are far from any the text is likely to hold.
        if !others.is_empty() && template.checked(analysis, shape, &|_| true, analyze) {
            return Some(template);
        }
        // Else they must match, and only the keys are changed.
        template.fixed = others
            .iter()
            .map(|&i| (i, shape.constants[i].value.clone()))
            .collect();
        template.quoted_free = false;
        template
            .checked(analysis, shape, &is_key, analyze)
            .then_some(template)
    }

    /// Whether the template gives, for `shape`'s text with the constants
    /// `change` picks changed, what `analyze` gives for it.
    fn checked(
        &self,
        analysis: &Analysis,
        shape: &Shape,
        change: &dyn Fn(usize) -> bool,
        analyze: &dyn Fn(&str) -> Analysis,
    ) -> bool {
        let mut probe = shape.clone();
        for (i, c) in probe.constants.iter_mut().enumerate() {
            if change(i) {
                c.value = if c.quoted {
                    format!("shardline probe {i}")
                } else {
                    let v = format!("9{i}7");
                    if v == c.value {
                        format!("8{i}7")
                    } else {
                        v
                    }
                };
            }
        }
        let text = probe.text();
        self.instantiate(analysis, &probe, &text)
            .is_some_and(|got| got == analyze(&text))
    }

    /// The analysis of the text `sql`, of shape `shape`, from the
    /// template's `analysis`; `None` when a constant that is no key
    /// differs.
    pub fn instantiate(&self, analysis: &Analysis, shape: &Shape, sql: &str) -> Option<Analysis> {
        for (i, v) in &self.fixed {
            if shape.constants.get(*i)?.value != *v {
                return None;
            }
        }
        let value = |i: usize| {
            shape
                .constants
                .get(i)
                .map(|c| KeyRef::Literal(c.value.clone()))
        };
        let mut a = analysis.clone();
        for (k, place) in a.keys.iter_mut().zip(&self.keys) {
            if let Some(i) = place {
                *k = value(*i)?;
            }
        }
        for (k, place) in a.insert_row_keys.iter_mut().zip(&self.row_keys) {
            if let Some(i) = place {
                *k = value(*i)?;
            }
        }
        // Keys are listed once each, in order of appearance; two keys of
        // the template may be one value here.
        let mut seen: Vec<KeyRef> = Vec::with_capacity(a.keys.len());
        a.keys.retain(|k| {
            let new = !seen.contains(k);
            if new {
                seen.push(k.clone());
            }
            new
        });
        if self.quoted_keys || self.quoted_free {
            a.guard_changes_session = crate::classify::may_change_session(sql, false);
        }
        Some(a)
    }

    /// An estimate of its size, heap included.
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<Template>()
            + (self.keys.capacity() + self.row_keys.capacity())
                * std::mem::size_of::<Option<usize>>()
            + self
                .fixed
                .iter()
                .map(|(_, v)| std::mem::size_of::<(usize, String)>() + v.capacity())
                .sum::<usize>()
    }
}

impl Shape {
    /// A text of this shape: each NUL replaced by its constant (a string
    /// quoted again).
    pub fn text(&self) -> String {
        let mut out = String::with_capacity(self.key.len() + 16 * self.constants.len());
        let mut constants = self.constants.iter();
        for (n, piece) in self.key.split('\0').enumerate() {
            if n > 0 {
                if let Some(c) = constants.next() {
                    if c.quoted {
                        out.push('\'');
                        out.push_str(&c.value.replace('\'', "''"));
                        out.push('\'');
                    } else {
                        out.push_str(&c.value);
                    }
                }
            }
            out.push_str(piece);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{shape, Constant};
    use crate::wire::analyze::tests::keys_of;
    use crate::wire::analyze::AnalysisCache;
    use crate::wire::analyze::{analyze, KeyRef};

    /// Texts with keys as constants, and traps: constants that are no key
    /// but change the analysis, keys that only look like a constant,
    /// ambiguous and repeated values, comments, quoting.
    const CORPUS: &[&str] = &[
        "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;",
        "SELECT * FROM users WHERE id = 'abc' AND name = 'x'",
        "SELECT * FROM users WHERE id = 5 AND other = 5",
        "SELECT * FROM users WHERE flag = 'true' AND id = TRUE",
        "SELECT * FROM users WHERE id = -5",
        "SELECT * FROM users WHERE id = +5",
        "SELECT * FROM users WHERE id IN (1, 2, 3)",
        "SELECT * FROM users WHERE id = 1 OR id = 2",
        "SELECT * FROM orders WHERE customer_id = 7 ORDER BY 1 LIMIT 10",
        "SELECT customer_id, count(*) FROM orders WHERE customer_id = 10 GROUP BY 1",
        "INSERT INTO orders (customer_id, v) VALUES (42, 'x')",
        "INSERT INTO orders (customer_id, v) VALUES (1, 'a'), (2, 'b')",
        "UPDATE users SET name = 'n' WHERE id = 9",
        "UPDATE users SET id = 10 WHERE id = 9",
        "DELETE FROM users WHERE id = '9'",
        "SELECT * FROM users WHERE id = 5 /* shardline.shard_key='7' */",
        "/* a 'comment' -- */ SELECT * FROM users WHERE id = 5 -- 'x'\n",
        "WITH x AS (SELECT * FROM orders WHERE customer_id = 3) SELECT * FROM x",
        "SELECT * FROM users u JOIN orders o ON o.customer_id = u.id WHERE u.id = 4",
        "SELECT * FROM users WHERE id = 1e5",
        "SELECT * FROM users WHERE id = 1.5",
        "SELECT * FROM users WHERE id = '7'::bigint",
        "SELECT * FROM users WHERE id = $1 AND name = 'x'",
        "SELECT set_config('a', 'b', false) FROM users WHERE id = 'k'",
        "SELECT * FROM users WHERE id = 'it''s'",
        "SELECT \"we\"\"ird\" FROM users WHERE id = 3",
        "SELECT * FROM users WHERE id = 3; SELECT * FROM users WHERE id = 4",
        "SELECT * FROM users WHERE id = 3; SET x = 1",
        "BEGIN; UPDATE users SET name = 'a' WHERE id = 3; COMMIT",
        "SELECT * FROM users WHERE id = 3 AND 2 > 1",
        "SELECT * FROM users WHERE id = 3 FOR UPDATE",
        "SELECT * FROM users WHERE id = (SELECT 5)",
        "SELECT * FROM users WHERE id = 3 UNION ALL SELECT * FROM users WHERE id = 4",
        "SELECT * FROM users WHERE id = 3 LIMIT 1 OFFSET 2",
        "COPY users FROM STDIN",
        "SELECT 12",
        "SELECT * FROM users WHERE id = 3 AND name = ''",
        "UPDATE users SET name = 'n', age = 3 WHERE id = 9",
        "INSERT INTO orders (customer_id, v, n) VALUES (42, 'x', 7)",
        "SELECT * FROM orders WHERE customer_id = 7 AND v > 3 ORDER BY v LIMIT 5",
        "SELECT name, 1 FROM users WHERE id = 4 ORDER BY 2",
        "SELECT * FROM users WHERE id = 4 AND name LIKE 'a%' FETCH FIRST 3 ROWS ONLY",
        "SELECT count(*) FROM orders WHERE customer_id IN (3, 4) OFFSET 2",
    ];

    /// Values a constant is changed to: other numbers and strings, the
    /// empty string, words the keyword guard looks for, and values equal
    /// to other constants of the corpus.
    const NUMBERS: &[&str] = &["0", "3", "5", "12345", "1.5", "77", "2"];
    const STRINGS: &[&str] = &["", "x", "abc", "true", "it's", "set_config(", "9", "k"];

    fn changed(c: &Constant, pick: usize) -> Constant {
        let pool = if c.quoted { STRINGS } else { NUMBERS };
        Constant {
            value: pool[pick % pool.len()].to_string(),
            quoted: c.quoted,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(600))]

        /// The oracle: after a cache has seen one text of a shape, the
        /// analysis it gives for another text of that shape equals the
        /// analysis of that text.
        #[test]
        fn a_shared_analysis_is_the_texts_own(
            which in 0..CORPUS.len(),
            picks in proptest::collection::vec(proptest::option::of(0usize..16), 0..8),
        ) {
            let first = CORPUS[which];
            let Some(s) = shape(first) else { return Ok(()); };
            let mut other = s.clone();
            for (c, pick) in other.constants.iter_mut().zip(&picks) {
                if let Some(pick) = pick {
                    *c = changed(c, *pick);
                }
            }
            let text = other.text();
            prop_assert_eq!(shape(&text).map(|s| s.key), Some(s.key.clone()));
            let cache = AnalysisCache::new(1 << 20);
            cache.get_or_analyze(first, 1, &keys_of);
            let got = cache.get_or_analyze(&text, 1, &keys_of);
            prop_assert_eq!(&*got, &analyze(&text, &keys_of), "{} after {}", text, first);
        }
    }

    #[test]
    fn pgbench_texts_share_one_entry() {
        let cache = AnalysisCache::new(1 << 20);
        let text = |aid: u32| format!("SELECT abalance FROM pgbench_accounts WHERE aid = {aid};");
        for aid in 1..200 {
            let a = cache.get_or_analyze(&text(aid), 1, &keys_of);
            assert_eq!(a.keys, [KeyRef::Literal(aid.to_string())]);
        }
        assert_eq!(cache.len(), 1, "one entry by shape, not one per text");
        // Keys given as strings, and other constants that must match.
        let text =
            |id: &str, name: &str| format!("UPDATE users SET name = '{name}' WHERE id = '{id}'");
        cache.get_or_analyze(&text("a", "n"), 1, &keys_of);
        let b = cache.get_or_analyze(&text("b", "n"), 1, &keys_of);
        assert_eq!(b.keys, [KeyRef::Literal("b".into())]);
        assert_eq!(cache.len(), 2);
        let c = cache.get_or_analyze(&text("c", "m"), 1, &keys_of);
        assert_eq!(c.keys, [KeyRef::Literal("c".into())]);
        assert_eq!(cache.len(), 2, "the name is free to differ: no new entry");
        // A constant the analysis depends on is fixed.
        let limited = |id: u32, n: u32| format!("SELECT * FROM users WHERE id = {id} LIMIT {n}");
        let limit = |a: &crate::wire::analyze::Analysis| a.fanout.as_ref().and_then(|f| f.limit);
        assert_eq!(
            limit(&cache.get_or_analyze(&limited(1, 10), 1, &keys_of)),
            Some(10)
        );
        assert_eq!(
            limit(&cache.get_or_analyze(&limited(2, 10), 1, &keys_of)),
            Some(10)
        );
        assert_eq!(cache.len(), 3);
        let other = cache.get_or_analyze(&limited(3, 20), 1, &keys_of);
        assert_eq!(
            (limit(&other), &other.keys[..]),
            (Some(20), &[KeyRef::Literal("3".into())][..])
        );
    }

    /// Parses of `sql` through `cache`, counted by the look-ups of the
    /// tables' keys they make.
    fn parses(cache: &AnalysisCache, sql: &str) -> usize {
        let calls = std::cell::Cell::new(0);
        let counted = |t: &str| {
            calls.set(calls.get() + 1);
            keys_of(t)
        };
        cache.get_or_analyze(sql, 1, &counted);
        calls.get()
    }

    #[test]
    fn a_shape_is_tried_for_a_template_once() {
        let cache = AnalysisCache::new(1 << 20);
        let one = parses(
            &AnalysisCache::new(0),
            "SELECT * FROM users WHERE id = 1 AND 2 > 1",
        );
        // No template (the key TRUE is no constant): tried with probes once.
        let trap = |s: &str| format!("SELECT * FROM users WHERE flag = '{s}' AND id = TRUE");
        assert!(parses(&cache, &trap("true")) > one);
        assert_eq!(parses(&cache, &trap("false")), one);
        // A template its text does not fit (another limit): parsed once.
        let limited = |id: u32, n: u32| format!("SELECT * FROM users WHERE id = {id} LIMIT {n}");
        assert!(parses(&cache, &limited(1, 10)) > one);
        assert_eq!(parses(&cache, &limited(2, 10)), 0, "from the template");
        assert_eq!(parses(&cache, &limited(3, 20)), one);
        assert_eq!(parses(&cache, &limited(4, 10)), 0, "the template stays");
    }

    #[test]
    fn no_template_where_a_key_is_not_one_constant() {
        let cache = AnalysisCache::new(1 << 20);
        for sql in [
            // The key `TRUE` is no constant; a string `'true'` is.
            "SELECT * FROM users WHERE flag = 'true' AND id = TRUE",
            // Two constants hold the key's value.
            "SELECT * FROM users WHERE id = 5 AND other = 5",
            // `-5`: the constant is `5`.
            "SELECT * FROM users WHERE id = -5",
        ] {
            let s = shape(sql).expect("a shape");
            cache.get_or_analyze(sql, 1, &keys_of);
            let mut other = s.clone();
            for c in &mut other.constants {
                c.value = format!("{}1", c.value);
            }
            let text = other.text();
            assert_eq!(
                *cache.get_or_analyze(&text, 1, &keys_of),
                analyze(&text, &keys_of)
            );
        }
    }

    #[test]
    fn the_scanner_reads_only_what_it_is_sure_of() {
        let s = shape("SELECT 'a''b', \"x\"\"y\", 1.5e3, $2 FROM t -- 'c'\n/* 'd' /* 'e' */ */")
            .expect("a shape");
        assert_eq!(
            s.key,
            "SELECT \0, \"x\"\"y\", \0, $2 FROM t -- 'c'\n/* 'd' /* 'e' */ */"
        );
        let values: Vec<&str> = s.constants.iter().map(|c| c.value.as_str()).collect();
        assert_eq!(values, ["a'b", "1.5e3"]);
        assert_eq!(
            s.text(),
            "SELECT 'a''b', \"x\"\"y\", 1.5e3, $2 FROM t -- 'c'\n/* 'd' /* 'e' */ */"
        );
        for sql in [
            "SELECT E'a\\nb'",
            "SELECT x'1F'",
            "SELECT U&'d0'",
            "SELECT 'a\\'",
            "SELECT $$a$$",
            "SELECT $q$a$q$",
            "SELECT 1abc",
            "SELECT 0x1F",
            "SELECT 1_000",
            "SELECT 'open",
            "SELECT \"open",
            "SELECT /* open",
            "SELECT 1e",
            "SELECT '\0'",
        ] {
            assert_eq!(shape(sql), None, "{sql}");
        }
        // Digits inside words and parameters stay.
        let s = shape("SELECT t1.c2 FROM t3 WHERE x = $12").expect("a shape");
        assert!(s.constants.is_empty());
    }
}
