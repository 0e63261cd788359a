//! A read that names no shard key, run on every shard of the keyspace at
//! once and merged as one result: rows concatenated, `count`/`sum`/
//! `min`/`max` combined (per group with `GROUP BY`), sorted by the
//! `ORDER BY` output columns, cut to the `LIMIT`. Each shard runs the
//! statement as sent (its `LIMIT` too, which keeps every row the merge
//! may need, since each shard sorts the same way). What cannot be merged
//! this way — `avg`, `OFFSET`, and what [`super::analyze`] finds no merge
//! shape for — is refused with a hint naming `shardline.shard_key`.
//!
//! Both protocols: a simple query as sent; an extended-protocol read as
//! the unnamed statement and portal, with the client's parameters and
//! result formats, the merge reading binary integers and floats as well
//! as text (a binary `numeric` sum is refused).

use std::cmp::Ordering;
use std::collections::HashMap;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::future::join_all;

use super::analyze::{Aggregate, FanOut};
use super::codec::{self, WireError};
use super::messages::{self, Bind, Parse};
use crate::auth::TenantAuth;
use crate::pg::frame::{Fields, Frame};
use crate::state::Routing;

/// One shard's answer.
struct Answer {
    /// The rows' `RowDescription` (the portal's, in the extended
    /// protocol: it carries the result formats).
    description: Option<Frame>,
    rows: Vec<Vec<Option<Bytes>>>,
    error: Option<Frame>,
    /// Extended protocol: the statement's `ParameterDescription` and
    /// its own `RowDescription` (or `NoData`).
    parameters: Option<Frame>,
    statement: Option<Frame>,
}

/// What an extended-protocol fan-out gives back, for the client's
/// `Describe`s and `Execute`.
pub struct Extended {
    pub parameters: Option<Frame>,
    pub statement: Option<Frame>,
    pub portal: Option<Frame>,
    /// Rows and the command tag, or the first shard's error.
    pub result: Vec<Frame>,
}

/// Why a merge is refused before anything runs.
pub fn check(spec: &FanOut) -> Result<(), WireError> {
    if spec.offset.is_some() {
        return Err(refusal("OFFSET"));
    }
    if spec.aggregates.iter().any(|a| a.function == Aggregate::Avg) {
        return Err(refusal("avg()"));
    }
    Ok(())
}

fn refusal(what: &str) -> WireError {
    WireError::error(
        "0A000",
        format!("a read with {what} and no shard key cannot be merged across shards"),
    )
    .with_hint("name the shard key (WHERE key = ...), or SET shardline.shard_key = '...'")
}

/// The raw pools of `tenant` on every shard of `keyspace`.
fn pools(
    routing: &Routing,
    keyspace: &str,
    tenant: &TenantAuth,
) -> Result<Vec<crate::pg::rawpool::RawPool>, WireError> {
    let map = routing
        .keyspaces
        .get(keyspace)
        .and_then(|k| k.map.as_ref())
        .ok_or_else(|| {
            WireError::error(
                "57P03",
                format!("keyspace \"{keyspace}\" has no shards yet"),
            )
        })?;
    let mut ids: Vec<&str> = map.ranges().iter().map(|r| r.shard.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let t = routing
            .shards
            .get(id)
            .filter(|t| t.failover.is_none())
            .ok_or_else(|| {
                WireError::error("57P03", format!("shard {id} is failing over; retry"))
            })?;
        out.push(t.primary.raw_pool_for(tenant));
    }
    Ok(out)
}

/// Runs `sql` (a simple query) on every shard of `keyspace` as `tenant`
/// and returns the merged messages (description, rows, command tag), or
/// the first shard's error.
pub async fn run(
    routing: &Routing,
    keyspace: &str,
    tenant: &TenantAuth,
    sql: &str,
    spec: &FanOut,
) -> Result<Vec<Frame>, WireError> {
    let mut out = BytesMut::new();
    postgres_protocol::message::frontend::query(sql, &mut out)
        .map_err(|e| WireError::error("22023", e.to_string()))?;
    let all = match ask_all(pools(routing, keyspace, tenant)?, out.freeze()).await? {
        Ok(all) => all,
        Err(error) => return Ok(vec![error]),
    };
    merge(all, spec)
}

/// Sends `out` to every pool's shard at once: every answer, or the
/// first shard error (an `ErrorResponse`).
async fn ask_all(
    pools: Vec<crate::pg::rawpool::RawPool>,
    out: Bytes,
) -> Result<Result<Vec<Answer>, Frame>, WireError> {
    let answers = join_all(pools.into_iter().map(|pool| ask(pool, out.clone()))).await;
    let mut all = Vec::with_capacity(answers.len());
    for a in answers {
        let a = a?;
        if let Some(e) = a.error {
            return Ok(Err(e));
        }
        all.push(a);
    }
    Ok(Ok(all))
}

/// Runs one bound statement (extended protocol: the query and parameter
/// types of its `Parse`, and its `Bind` body, whose names are replaced by
/// the unnamed statement and portal) on every shard and merges.
pub async fn run_extended(
    routing: &Routing,
    keyspace: &str,
    tenant: &TenantAuth,
    parse: &Parse,
    bind: &Bind,
    bind_body: &Bytes,
    spec: &FanOut,
) -> Result<Extended, WireError> {
    let mut out = BytesMut::new();
    parse.frame_as("").encode(&mut out);
    messages::target_frame(b'D', b'S', "").encode(&mut out);
    bind.frame_as(bind_body, "", "").encode(&mut out);
    messages::describe_execute_sync(&mut out);
    let all = match ask_all(pools(routing, keyspace, tenant)?, out.freeze()).await? {
        Ok(all) => all,
        Err(error) => {
            return Ok(Extended {
                parameters: None,
                statement: None,
                portal: None,
                result: vec![error],
            })
        }
    };
    let parameters = all.first().and_then(|a| a.parameters.clone());
    let statement = all.first().and_then(|a| a.statement.clone());
    let portal = all.iter().find_map(|a| a.description.clone());
    let mut result = merge(all, spec)?;
    // The description goes with the client's `Describe`, not its
    // `Execute`.
    if result.first().is_some_and(|f| f.tag == b'T') {
        result.remove(0);
    }
    Ok(Extended {
        parameters,
        statement,
        portal,
        result,
    })
}

/// Sends `out` to one shard and reads its answer to `ReadyForQuery`; the
/// session goes back to its pool if it ended idle.
async fn ask(pool: crate::pg::rawpool::RawPool, out: Bytes) -> Result<Answer, WireError> {
    let unavailable = |e: String| WireError::error("57P03", format!("a shard is unavailable: {e}"));
    let mut conn = pool.get().await.map_err(|e| unavailable(e.to_string()))?;
    conn.conn
        .send(&out)
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let mut answer = Answer {
        description: None,
        rows: Vec::new(),
        error: None,
        parameters: None,
        statement: None,
    };
    // Extended protocol: the first description after `ParameterDescription`
    // is the statement's, the one after `BindComplete` the portal's.
    let mut bound = false;
    loop {
        let f = conn
            .conn
            .read()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        match f.tag {
            b't' => answer.parameters = Some(f),
            b'2' => bound = true,
            b'T' | b'n' if answer.parameters.is_some() && !bound => answer.statement = Some(f),
            b'T' => answer.description = Some(f),
            b'D' => answer
                .rows
                .push(data_row(&f.body).map_err(|e| unavailable(e.to_string()))?),
            b'E' => answer.error = answer.error.take().or(Some(f)),
            b'Z' => {
                if f.body.first() == Some(&b'I') {
                    pool.put(conn);
                }
                return Ok(answer);
            }
            _ => {}
        }
    }
}

pub(crate) fn data_row(body: &Bytes) -> std::io::Result<Vec<Option<Bytes>>> {
    let mut f = Fields::new(body);
    let n = f.i16()?;
    let mut out = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    for _ in 0..n.max(0) {
        let len = f.i32()?;
        match usize::try_from(len) {
            Ok(l) => {
                let start = body.len() - f.rest().len();
                f.bytes(l)?;
                out.push(Some(body.slice(start..start + l)));
            }
            Err(_) => out.push(None),
        }
    }
    Ok(out)
}

fn encode_row(row: &[Option<Bytes>]) -> Frame {
    let mut b = BytesMut::new();
    b.put_i16(i16::try_from(row.len()).unwrap_or(i16::MAX));
    for v in row {
        match v {
            Some(v) => {
                b.put_i32(i32::try_from(v.len()).unwrap_or(i32::MAX));
                b.put_slice(v);
            }
            None => b.put_i32(-1),
        }
    }
    Frame::new(b'D', b.freeze())
}

/// The type oid and format (0 text, 1 binary) of each column of a
/// `RowDescription`.
fn column_types(desc: Option<&Frame>) -> Vec<(u32, i16)> {
    let Some(d) = desc else { return Vec::new() };
    let mut f = Fields::new(&d.body);
    let mut out = Vec::new();
    let Ok(n) = f.i16() else { return out };
    for _ in 0..n.max(0) {
        let ok = f.cstr().is_ok() && f.bytes(6).is_ok();
        let Ok(oid) = f.i32() else { break };
        if !ok || f.bytes(6).is_err() {
            break;
        }
        let Ok(format) = f.i16() else { break };
        out.push((oid as u32, format));
    }
    out
}

/// How a column's values read: its type and format.
#[derive(Debug, Clone, Copy, Default)]
struct Column {
    oid: u32,
    binary: bool,
}

impl Column {
    /// Whether values compare as numbers (text of a number type).
    fn numeric_text(self) -> bool {
        !self.binary && matches!(self.oid, 20 | 21 | 23 | 26 | 700 | 701 | 1700)
    }

    /// A binary integer's value (`int2`, `int4`, `int8`, `oid`).
    fn binary_int(self, v: &[u8]) -> Option<i128> {
        if !self.binary {
            return None;
        }
        match (self.oid, v.len()) {
            (20, 8) => Some(i128::from(i64::from_be_bytes(v.try_into().ok()?))),
            (23, 4) => Some(i128::from(i32::from_be_bytes(v.try_into().ok()?))),
            (21, 2) => Some(i128::from(i16::from_be_bytes(v.try_into().ok()?))),
            (26, 4) => Some(i128::from(u32::from_be_bytes(v.try_into().ok()?))),
            _ => None,
        }
    }

    /// A binary float's value (`float4`, `float8`).
    fn binary_float(self, v: &[u8]) -> Option<f64> {
        if !self.binary {
            return None;
        }
        match (self.oid, v.len()) {
            (701, 8) => Some(f64::from_be_bytes(v.try_into().ok()?)),
            (700, 4) => Some(f64::from(f32::from_be_bytes(v.try_into().ok()?))),
            _ => None,
        }
    }

    fn compare(self, a: &Bytes, b: &Bytes) -> Ordering {
        if let (Some(x), Some(y)) = (self.binary_int(a), self.binary_int(b)) {
            return x.cmp(&y);
        }
        if let (Some(x), Some(y)) = (self.binary_float(a), self.binary_float(b)) {
            return x.total_cmp(&y);
        }
        compare(a, b, self.numeric_text())
    }

    /// `a + b`, in the column's format; `None` when the format cannot be
    /// added here (a binary `numeric`).
    fn add(self, a: &Bytes, b: &Bytes) -> Option<Bytes> {
        if !self.binary {
            return Some(add(a, b));
        }
        if let (Some(x), Some(y)) = (self.binary_int(a), self.binary_int(b)) {
            let sum = x.checked_add(y)?;
            return match self.oid {
                20 => Some(Bytes::copy_from_slice(
                    &i64::try_from(sum).ok()?.to_be_bytes(),
                )),
                23 => Some(Bytes::copy_from_slice(
                    &i32::try_from(sum).ok()?.to_be_bytes(),
                )),
                21 => Some(Bytes::copy_from_slice(
                    &i16::try_from(sum).ok()?.to_be_bytes(),
                )),
                _ => None,
            };
        }
        match (self.oid, self.binary_float(a), self.binary_float(b)) {
            (701, Some(x), Some(y)) => Some(Bytes::copy_from_slice(&(x + y).to_be_bytes())),
            (700, Some(x), Some(y)) => {
                Some(Bytes::copy_from_slice(&((x + y) as f32).to_be_bytes()))
            }
            _ => None,
        }
    }
}

fn columns(desc: Option<&Frame>) -> Vec<Column> {
    column_types(desc)
        .into_iter()
        .map(|(oid, format)| Column {
            oid,
            binary: format == 1,
        })
        .collect()
}

fn merge(answers: Vec<Answer>, spec: &FanOut) -> Result<Vec<Frame>, WireError> {
    let description = answers.iter().find_map(|a| a.description.clone());
    let cols = columns(description.as_ref());
    let col = |c: usize| cols.get(c).copied().unwrap_or_default();
    let mut rows: Vec<Vec<Option<Bytes>>> = answers.into_iter().flat_map(|a| a.rows).collect();
    if !spec.aggregates.is_empty() {
        rows = combine(rows, spec, &col)?;
    }
    if !spec.order_by.is_empty() {
        rows.sort_by(|a, b| {
            for k in &spec.order_by {
                let (x, y) = (
                    a.get(k.column).cloned().flatten(),
                    b.get(k.column).cloned().flatten(),
                );
                let o = match (x, y) {
                    (None, None) => Ordering::Equal,
                    (None, Some(_)) if k.nulls_first => Ordering::Less,
                    (None, Some(_)) => Ordering::Greater,
                    (Some(_), None) if k.nulls_first => Ordering::Greater,
                    (Some(_), None) => Ordering::Less,
                    (Some(x), Some(y)) if k.descending => col(k.column).compare(&x, &y).reverse(),
                    (Some(x), Some(y)) => col(k.column).compare(&x, &y),
                };
                if o != Ordering::Equal {
                    return o;
                }
            }
            Ordering::Equal
        });
    }
    if let Some(limit) = spec.limit {
        rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    }
    let mut out = Vec::with_capacity(rows.len() + 2);
    if let Some(d) = description {
        out.push(d);
    }
    let n = rows.len();
    out.extend(rows.iter().map(|r| encode_row(r)));
    out.push(codec::command_complete(&format!("SELECT {n}")));
    Ok(out)
}

/// Rows merged per group (the values of the non-aggregate columns).
fn combine(
    rows: Vec<Vec<Option<Bytes>>>,
    spec: &FanOut,
    col: &dyn Fn(usize) -> Column,
) -> Result<Vec<Vec<Option<Bytes>>>, WireError> {
    let agg_of = |c: usize| {
        spec.aggregates
            .iter()
            .find(|a| a.column == c)
            .map(|a| a.function)
    };
    let mut order: Vec<Vec<Option<Bytes>>> = Vec::new();
    let mut groups: HashMap<Vec<Option<Bytes>>, usize> = HashMap::new();
    for row in rows {
        let key: Vec<Option<Bytes>> = if spec.group_by {
            row.iter()
                .enumerate()
                .filter(|(c, _)| agg_of(*c).is_none())
                .map(|(_, v)| v.clone())
                .collect()
        } else {
            Vec::new()
        };
        let Some(&i) = groups.get(&key) else {
            groups.insert(key, order.len());
            order.push(row);
            continue;
        };
        let acc = &mut order[i];
        for (c, v) in row.into_iter().enumerate() {
            let Some(f) = agg_of(c) else { continue };
            let column = col(c);
            let cur = acc.get(c).cloned().flatten();
            let merged = match (cur, v) {
                (None, v) => v,
                (cur, None) => cur,
                (Some(a), Some(b)) => Some(match f {
                    Aggregate::Count | Aggregate::Sum => column.add(&a, &b).ok_or_else(|| {
                        refusal("a sum in a binary format the router does not add")
                    })?,
                    Aggregate::Min if column.compare(&b, &a) == Ordering::Less => b,
                    Aggregate::Max if column.compare(&b, &a) == Ordering::Greater => b,
                    Aggregate::Min | Aggregate::Max => a,
                    // Refused before running (see `check`).
                    Aggregate::Avg => a,
                }),
            };
            if let Some(slot) = acc.get_mut(c) {
                *slot = merged;
            }
        }
    }
    Ok(order)
}

/// A decimal in text form: digits, an optional sign and point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Dec {
    mant: i128,
    scale: u32,
}

fn parse_dec(s: &str) -> Option<Dec> {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
    {
        return None;
    }
    if int.len() + frac.len() > 36 {
        return None;
    }
    let mut mant: i128 = 0;
    for b in int.bytes().chain(frac.bytes()) {
        mant = mant * 10 + i128::from(b - b'0');
    }
    Some(Dec {
        mant: if neg { -mant } else { mant },
        scale: u32::try_from(frac.len()).ok()?,
    })
}

fn rescale(d: Dec, scale: u32) -> Option<i128> {
    d.mant.checked_mul(10i128.checked_pow(scale - d.scale)?)
}

fn format_dec(mant: i128, scale: u32) -> String {
    if scale == 0 {
        return mant.to_string();
    }
    let neg = mant < 0;
    let digits = mant.unsigned_abs().to_string();
    let scale = scale as usize;
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{}{int}.{frac}", if neg { "-" } else { "" })
}

/// `a + b` of two number texts: exact for decimals, else as floats.
fn add(a: &Bytes, b: &Bytes) -> Bytes {
    let (sa, sb) = (String::from_utf8_lossy(a), String::from_utf8_lossy(b));
    if let (Some(x), Some(y)) = (parse_dec(&sa), parse_dec(&sb)) {
        let scale = x.scale.max(y.scale);
        if let (Some(p), Some(q)) = (rescale(x, scale), rescale(y, scale)) {
            if let Some(sum) = p.checked_add(q) {
                return Bytes::from(format_dec(sum, scale));
            }
        }
    }
    match (sa.parse::<f64>(), sb.parse::<f64>()) {
        (Ok(x), Ok(y)) => Bytes::from((x + y).to_string()),
        _ => a.clone(),
    }
}

fn compare(a: &Bytes, b: &Bytes, numeric: bool) -> Ordering {
    if numeric {
        let (sa, sb) = (String::from_utf8_lossy(a), String::from_utf8_lossy(b));
        if let (Some(x), Some(y)) = (parse_dec(&sa), parse_dec(&sb)) {
            let scale = x.scale.max(y.scale);
            if let (Some(p), Some(q)) = (rescale(x, scale), rescale(y, scale)) {
                return p.cmp(&q);
            }
        }
        if let (Ok(x), Ok(y)) = (sa.parse::<f64>(), sb.parse::<f64>()) {
            return x.partial_cmp(&y).unwrap_or(Ordering::Equal);
        }
    }
    a.cmp(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::analyze::{OutputAggregate, SortKey};

    fn b(s: &str) -> Option<Bytes> {
        Some(Bytes::from(s.to_string()))
    }

    #[test]
    fn decimals_add_exactly() {
        assert_eq!(
            add(&Bytes::from("1.50"), &Bytes::from("2.7")),
            Bytes::from("4.20")
        );
        assert_eq!(
            add(&Bytes::from("-3"), &Bytes::from("1")),
            Bytes::from("-2")
        );
        assert_eq!(
            add(&Bytes::from("0.05"), &Bytes::from("-0.10")),
            Bytes::from("-0.05")
        );
        assert_eq!(
            add(&Bytes::from("1e3"), &Bytes::from("1")),
            Bytes::from("1001")
        );
    }

    #[test]
    fn counts_add_and_extremes_compare_as_numbers() {
        let spec = FanOut {
            aggregates: vec![
                OutputAggregate {
                    column: 0,
                    function: Aggregate::Count,
                },
                OutputAggregate {
                    column: 1,
                    function: Aggregate::Max,
                },
                OutputAggregate {
                    column: 2,
                    function: Aggregate::Min,
                },
            ],
            ..FanOut::default()
        };
        let rows = vec![vec![b("3"), b("9"), b("x")], vec![b("4"), b("10"), None]];
        let cols = [(20, false), (23, false), (25, false)];
        let col = |c: usize| Column {
            oid: cols[c].0,
            binary: cols[c].1,
        };
        let out = combine(rows, &spec, &col).unwrap();
        assert_eq!(out, vec![vec![b("7"), b("10"), b("x")]]);
        // Binary counts add as integers.
        let bin = |c: usize| Column {
            oid: [20, 20, 20][c],
            binary: true,
        };
        let eight = |n: i64| Some(Bytes::copy_from_slice(&n.to_be_bytes()));
        let out = combine(
            vec![vec![eight(3)], vec![eight(4)]],
            &FanOut {
                aggregates: vec![OutputAggregate {
                    column: 0,
                    function: Aggregate::Count,
                }],
                ..FanOut::default()
            },
            &bin,
        )
        .unwrap();
        assert_eq!(out, vec![vec![eight(7)]]);
    }

    #[test]
    fn groups_merge_and_sort() {
        let spec = FanOut {
            aggregates: vec![OutputAggregate {
                column: 1,
                function: Aggregate::Sum,
            }],
            group_by: true,
            order_by: vec![SortKey {
                column: 1,
                descending: true,
                nulls_first: true,
            }],
            limit: Some(2),
            offset: None,
        };
        let shard = |rows: Vec<Vec<Option<Bytes>>>| Answer {
            description: None,
            rows,
            error: None,
            parameters: None,
            statement: None,
        };
        let frames = merge(
            vec![
                shard(vec![vec![b("a"), b("1")], vec![b("b"), b("5")]]),
                shard(vec![vec![b("a"), b("7")], vec![b("c"), b("2")]]),
            ],
            &spec,
        )
        .unwrap();
        let rows: Vec<_> = frames
            .iter()
            .filter(|f| f.tag == b'D')
            .map(|f| data_row(&f.body).unwrap())
            .collect();
        // Sums compare as text here (no description): "8" > "5".
        assert_eq!(rows, vec![vec![b("a"), b("8")], vec![b("b"), b("5")]]);
        assert_eq!(frames.last().map(|f| f.tag), Some(b'C'));
    }

    #[test]
    fn offsets_and_averages_are_refused() {
        assert!(check(&FanOut {
            offset: Some(1),
            ..FanOut::default()
        })
        .is_err());
        let avg = FanOut {
            aggregates: vec![OutputAggregate {
                column: 0,
                function: Aggregate::Avg,
            }],
            ..FanOut::default()
        };
        assert!(check(&avg).is_err());
        assert!(check(&FanOut::default()).is_ok());
    }
}
