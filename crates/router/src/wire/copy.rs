//! The rows of a `COPY ... FROM STDIN` stream (text or CSV), cut out of
//! the client's `CopyData` messages — which need not end at rows — with
//! each row's shard-key field, so the rows can be sent to their shards.
//!
//! Rows are passed on byte for byte; only the key field is decoded
//! (text format's backslash escapes, CSV's quotes) to route the row.

use bytes::{Buf as _, Bytes, BytesMut};

use super::analyze::{CopyFormat, CopySpec};

/// A piece of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// A CSV header line: every shard skips one.
    Header(Bytes),
    /// A row and its key (`None`: the field is NULL or missing).
    Row { key: Option<String>, bytes: Bytes },
}

/// Cuts a stream into rows (see the module docs).
pub struct RowSplitter {
    csv: bool,
    delimiter: u8,
    quote: u8,
    escape: u8,
    key_field: usize,
    header_pending: bool,
    /// Bytes of the row under way.
    buf: BytesMut,
    /// How far `buf` was scanned, and whether inside CSV quotes there.
    scanned: usize,
    in_quotes: bool,
    /// The end-of-data line `\.` was seen: the rest is ignored.
    ended: bool,
}

impl RowSplitter {
    /// A splitter for `spec` (text or CSV) whose rows hold the key in
    /// field `key_field` (0-based).
    pub fn new(spec: &CopySpec, key_field: usize) -> Self {
        let csv = spec.format == CopyFormat::Csv;
        RowSplitter {
            csv,
            delimiter: spec.delimiter,
            quote: spec.quote,
            escape: spec.escape,
            key_field,
            header_pending: csv && spec.header,
            buf: BytesMut::new(),
            scanned: 0,
            in_quotes: false,
            ended: false,
        }
    }

    /// Feeds a `CopyData` body; complete rows go to `out`.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<Piece>) {
        if self.ended {
            return;
        }
        self.buf.extend_from_slice(data);
        while let Some(end) = self.row_end() {
            let row = self.buf.split_to(end + 1).freeze();
            self.scanned = 0;
            self.in_quotes = false;
            self.take(row, out);
            if self.ended {
                self.buf.clear();
                return;
            }
        }
    }

    /// Ends the stream: a last row without its newline goes to `out`.
    pub fn finish(&mut self, out: &mut Vec<Piece>) {
        if !self.ended && !self.buf.is_empty() {
            let mut row = std::mem::take(&mut self.buf);
            row.extend_from_slice(b"\n");
            self.take(row.freeze(), out);
        }
        self.ended = true;
    }

    fn take(&mut self, row: Bytes, out: &mut Vec<Piece>) {
        let line = trim_newline(&row);
        if line == b"\\." {
            self.ended = true;
            return;
        }
        if self.header_pending {
            self.header_pending = false;
            out.push(Piece::Header(row));
            return;
        }
        let key = if self.csv {
            self.csv_key(line)
        } else {
            self.text_key(line)
        };
        out.push(Piece::Row { key, bytes: row });
    }

    /// The index of the newline ending the row under way, if it came.
    fn row_end(&mut self) -> Option<usize> {
        let b = &self.buf[..];
        let mut i = self.scanned;
        while i < b.len() {
            let c = b[i];
            if !self.csv {
                if c == b'\\' {
                    if i + 1 >= b.len() {
                        // The escaped byte has not come yet.
                        self.scanned = i;
                        return None;
                    }
                    i += 2;
                    continue;
                }
                if c == b'\n' {
                    return Some(i);
                }
            } else if self.in_quotes {
                if c == self.escape && self.escape != self.quote {
                    if i + 1 >= b.len() {
                        self.scanned = i;
                        return None;
                    }
                    if b[i + 1] == self.quote || b[i + 1] == self.escape {
                        i += 2;
                        continue;
                    }
                }
                if c == self.quote {
                    // A doubled quote stays inside: seen as out, then in.
                    self.in_quotes = false;
                }
            } else if c == self.quote {
                self.in_quotes = true;
            } else if c == b'\n' {
                return Some(i);
            }
            i += 1;
        }
        self.scanned = i;
        None
    }

    fn text_key(&self, line: &[u8]) -> Option<String> {
        let field = nth_field(line, self.key_field, |b, i| {
            if b[i] == b'\\' {
                Step::Skip(2)
            } else if b[i] == self.delimiter {
                Step::Split
            } else {
                Step::Skip(1)
            }
        })?;
        if field == b"\\N" {
            return None;
        }
        String::from_utf8(unescape_text(field)).ok()
    }

    fn csv_key(&self, line: &[u8]) -> Option<String> {
        let mut quoted = false;
        let field = nth_field(line, self.key_field, |b, i| {
            let c = b[i];
            if quoted {
                if c == self.escape
                    && self.escape != self.quote
                    && b.get(i + 1)
                        .is_some_and(|n| *n == self.quote || *n == self.escape)
                {
                    return Step::Skip(2);
                }
                if c == self.quote {
                    quoted = false;
                }
                Step::Skip(1)
            } else if c == self.quote {
                quoted = true;
                Step::Skip(1)
            } else if c == self.delimiter {
                Step::Split
            } else {
                Step::Skip(1)
            }
        })?;
        if field.is_empty() {
            // An unquoted empty field is NULL.
            return None;
        }
        let mut out = Vec::with_capacity(field.len());
        let mut quoted = false;
        let mut i = 0;
        while i < field.len() {
            let c = field[i];
            if quoted {
                let next = field.get(i + 1).copied();
                if c == self.escape && next.is_some_and(|n| n == self.quote || n == self.escape) {
                    // With escape = quote, a doubled quote (`""`) is one.
                    if c != self.quote || next == Some(self.quote) {
                        out.extend(next);
                        i += 2;
                        continue;
                    }
                }
                if c == self.quote {
                    quoted = false;
                } else {
                    out.push(c);
                }
            } else if c == self.quote {
                quoted = true;
            } else {
                out.push(c);
            }
            i += 1;
        }
        String::from_utf8(out).ok()
    }
}

enum Step {
    Skip(usize),
    Split,
}

/// Field `n` of a line, scanned by `step`.
fn nth_field(line: &[u8], n: usize, mut step: impl FnMut(&[u8], usize) -> Step) -> Option<&[u8]> {
    let mut field = 0;
    let mut start = 0;
    let mut i = 0;
    while i < line.len() {
        match step(line, i) {
            Step::Skip(k) => i += k,
            Step::Split => {
                if field == n {
                    return Some(&line[start..i]);
                }
                field += 1;
                i += 1;
                start = i;
            }
        }
    }
    (field == n).then(|| &line[start..line.len().min(i)])
}

fn trim_newline(row: &[u8]) -> &[u8] {
    let row = row.strip_suffix(b"\n").unwrap_or(row);
    row.strip_suffix(b"\r").unwrap_or(row)
}

/// A text-format field's value: `\t`, `\n`, octal `\123`, hex `\x41`,
/// and `\c` for any other `c`.
fn unescape_text(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut b = field;
    while let Some((&c, rest)) = b.split_first() {
        b = rest;
        if c != b'\\' {
            out.push(c);
            continue;
        }
        let Some((&e, rest)) = b.split_first() else {
            out.push(b'\\');
            break;
        };
        b = rest;
        match e {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = u32::from(e - b'0');
                for _ in 0..2 {
                    match b.first() {
                        Some(&d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            b.advance(1);
                        }
                        _ => break,
                    }
                }
                out.push((v & 0xff) as u8);
            }
            b'x' if b.first().is_some_and(u8::is_ascii_hexdigit) => {
                let mut v = 0u32;
                for _ in 0..2 {
                    match b.first().and_then(|d| (*d as char).to_digit(16)) {
                        Some(d) => {
                            v = v * 16 + d;
                            b.advance(1);
                        }
                        None => break,
                    }
                }
                out.push((v & 0xff) as u8);
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(format: CopyFormat, header: bool) -> CopySpec {
        CopySpec {
            to: false,
            table: "t".into(),
            columns: vec![],
            key_column: "k".into(),
            format,
            delimiter: if format == CopyFormat::Csv {
                b','
            } else {
                b'\t'
            },
            quote: b'"',
            escape: b'"',
            header,
        }
    }

    fn keys(s: &mut RowSplitter, chunks: &[&[u8]]) -> Vec<(Option<String>, Vec<u8>)> {
        let mut out = Vec::new();
        for c in chunks {
            s.push(c, &mut out);
        }
        s.finish(&mut out);
        out.into_iter()
            .map(|p| match p {
                Piece::Header(b) => (Some("HEADER".into()), b.to_vec()),
                Piece::Row { key, bytes } => (key, bytes.to_vec()),
            })
            .collect()
    }

    #[test]
    fn text_rows_across_chunk_boundaries() {
        let mut s = RowSplitter::new(&spec(CopyFormat::Text, false), 1);
        let got = keys(
            &mut s,
            &[
                b"a\t1",
                b"2\tx\nb\\tc\t\\x41\\\n",
                b"B\n\\N\t\\N\nz\t",
                b"7",
            ],
        );
        assert_eq!(
            got,
            vec![
                (Some("12".into()), b"a\t12\tx\n".to_vec()),
                (Some("A\nB".into()), b"b\\tc\t\\x41\\\nB\n".to_vec()),
                (None, b"\\N\t\\N\n".to_vec()),
                (Some("7".into()), b"z\t7\n".to_vec()),
            ]
        );
    }

    #[test]
    fn the_end_marker_ends_the_data() {
        let mut s = RowSplitter::new(&spec(CopyFormat::Text, false), 0);
        let got = keys(&mut s, &[b"1\n\\.\n2\n"]);
        assert_eq!(got, vec![(Some("1".into()), b"1\n".to_vec())]);
    }

    #[test]
    fn csv_quotes_headers_and_newlines_inside_fields() {
        let mut s = RowSplitter::new(&spec(CopyFormat::Csv, true), 1);
        let got = keys(
            &mut s,
            &[b"v,k\n\"a,\n\"\"b\",\"4", b"2\"\r\nc,7\n,\n\"x\",\"\"\n"],
        );
        assert_eq!(
            got,
            vec![
                (Some("HEADER".into()), b"v,k\n".to_vec()),
                (Some("42".into()), b"\"a,\n\"\"b\",\"42\"\r\n".to_vec()),
                (Some("7".into()), b"c,7\n".to_vec()),
                (None, b",\n".to_vec()),
                (Some(String::new()), b"\"x\",\"\"\n".to_vec()),
            ]
        );
    }

    proptest::proptest! {
        /// However the client cuts its stream into messages, the rows
        /// and keys come out the same (and nothing panics on any bytes).
        #[test]
        fn chunking_does_not_change_the_rows(
            rows in proptest::collection::vec(
                (0u32..1000, "[a-z,\"\\\\\t\n ]{0,12}"), 0..8),
            cuts in proptest::collection::vec(0usize..200, 0..6),
            csv in proptest::bool::ANY,
        ) {
            let format = if csv { CopyFormat::Csv } else { CopyFormat::Text };
            let mut stream = Vec::new();
            for (k, v) in &rows {
                if csv {
                    stream.extend_from_slice(
                        format!("{k},\"{}\"\n", v.replace('"', "\"\"")).as_bytes(),
                    );
                } else {
                    let v = v.replace('\\', "\\\\").replace('\t', "\\t").replace('\n', "\\n");
                    stream.extend_from_slice(format!("{k}\t{v}\n").as_bytes());
                }
            }
            let whole = keys(&mut RowSplitter::new(&spec(format, false), 0), &[&stream]);
            let mut points: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
            points.sort_unstable();
            let mut chunks: Vec<&[u8]> = Vec::new();
            let mut at = 0;
            for p in points {
                chunks.push(&stream[at..p]);
                at = p;
            }
            chunks.push(&stream[at..]);
            let cut = keys(&mut RowSplitter::new(&spec(format, false), 0), &chunks);
            proptest::prop_assert_eq!(&whole, &cut);
            let want: Vec<Option<String>> = rows.iter().map(|(k, _)| Some(k.to_string())).collect();
            let got: Vec<Option<String>> = whole.into_iter().map(|(k, _)| k).collect();
            proptest::prop_assert_eq!(got, want);
        }

        #[test]
        fn any_bytes_are_cut_without_panicking(
            data in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            csv in proptest::bool::ANY,
        ) {
            let format = if csv { CopyFormat::Csv } else { CopyFormat::Text };
            let mut s = RowSplitter::new(&spec(format, true), 3);
            let mut out = Vec::new();
            for chunk in data.chunks(7) {
                s.push(chunk, &mut out);
            }
            s.finish(&mut out);
        }
    }

    #[test]
    fn a_missing_field_has_no_key() {
        let mut s = RowSplitter::new(&spec(CopyFormat::Text, false), 2);
        assert_eq!(keys(&mut s, &[b"1\t2\n"]), vec![(None, b"1\t2\n".to_vec())]);
    }
}
