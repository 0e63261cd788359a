//! `COPY` of a sharded table to or from the client: what the wire front
//! end needs to split its rows by key or concatenate the shards' rows.

use sqlparser::ast::{
    CopyLegacyCsvOption, CopyLegacyOption, CopyOption, CopySource, CopyTarget, Statement,
};

use super::walk::fold;

/// A row format of `COPY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyFormat {
    Text,
    Csv,
    Binary,
}

/// A `COPY t [(cols)] FROM STDIN | TO STDOUT` of a sharded table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopySpec {
    /// `TO STDOUT` (else `FROM STDIN`).
    pub to: bool,
    /// The table's name as written (for a catalog look-up of its
    /// columns).
    pub table: String,
    /// The column list, folded; empty for every column in table order.
    pub columns: Vec<String>,
    /// The table's shard-key column.
    pub key_column: String,
    pub format: CopyFormat,
    pub delimiter: u8,
    /// CSV quote and escape characters.
    pub quote: u8,
    pub escape: u8,
    /// CSV `HEADER` (`MATCH` counts as a header too).
    pub header: bool,
}

/// The spec of a `COPY` statement of a sharded table to or from the
/// client; `None` for other statements, `COPY (query)`, files and
/// programs, and options that are not one ASCII character where one is
/// needed.
pub(super) fn spec(
    statement: &Statement,
    shard_key_of: &dyn Fn(&str) -> Option<String>,
) -> Option<CopySpec> {
    let Statement::Copy {
        source: CopySource::Table {
            table_name,
            columns,
        },
        to,
        target,
        options,
        legacy_options,
        ..
    } = statement
    else {
        return None;
    };
    if !matches!(target, CopyTarget::Stdin | CopyTarget::Stdout) {
        return None;
    }
    let last = table_name.0.last()?.as_ident()?;
    let key_column = shard_key_of(&fold(last))?;
    let mut spec = CopySpec {
        to: *to,
        table: table_name.to_string(),
        columns: columns.iter().map(fold).collect(),
        key_column,
        format: CopyFormat::Text,
        delimiter: b'\t',
        quote: b'"',
        escape: 0,
        header: false,
    };
    let ascii = |c: char| u8::try_from(c).ok().filter(u8::is_ascii);
    let mut delimiter = None;
    for o in options {
        match o {
            CopyOption::Format(f) => {
                spec.format = match f.value.to_ascii_lowercase().as_str() {
                    "text" => CopyFormat::Text,
                    "csv" => CopyFormat::Csv,
                    "binary" => CopyFormat::Binary,
                    _ => return None,
                }
            }
            CopyOption::Delimiter(c) => delimiter = Some(ascii(*c)?),
            CopyOption::Header(h) => spec.header = *h,
            CopyOption::Quote(c) => spec.quote = ascii(*c)?,
            CopyOption::Escape(c) => spec.escape = ascii(*c)?,
            _ => {}
        }
    }
    for o in legacy_options {
        match o {
            CopyLegacyOption::Binary => spec.format = CopyFormat::Binary,
            CopyLegacyOption::Delimiter(c) => delimiter = Some(ascii(*c)?),
            CopyLegacyOption::Header => spec.header = true,
            CopyLegacyOption::Csv(csv) => {
                spec.format = CopyFormat::Csv;
                for c in csv {
                    match c {
                        CopyLegacyCsvOption::Header => spec.header = true,
                        CopyLegacyCsvOption::Quote(q) => spec.quote = ascii(*q)?,
                        CopyLegacyCsvOption::Escape(e) => spec.escape = ascii(*e)?,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if spec.format == CopyFormat::Csv {
        spec.delimiter = delimiter.unwrap_or(b',');
        if spec.escape == 0 {
            spec.escape = spec.quote;
        }
    } else if let Some(d) = delimiter {
        spec.delimiter = d;
    }
    Some(spec)
}
