//! JSON ↔ PostgreSQL values in the binary wire format.
//!
//! Parameters are typed by the prepared statement: each JSON value is
//! encoded for the type PostgreSQL inferred for its `$n`, before anything
//! is sent, so a mismatch is the client's 400 naming the parameter and no
//! half-sent statement. Rows come back in binary and are decoded here.
//!
//! Parameters, by SQL type (`null` is NULL for every type):
//! - `bool`: JSON booleans only.
//! - `int2`/`int4`/`int8`/`oid`: JSON integers (or numbers with no
//!   fraction up to 2^53), and decimal strings (`"9007199254740993"`),
//!   since large int8 values are returned as strings; range-checked.
//! - `float4`/`float8`: numbers; strings holding a number, `NaN`,
//!   `Infinity`, `-Infinity`.
//! - `numeric`: numbers and decimal strings (exact; `NaN`, `±Infinity`).
//! - text types (`text`, `varchar`, `bpchar`, `name`, `citext`, enums,
//!   and untyped `$1`): strings; numbers and booleans are sent as their
//!   JSON text (`42` → `'42'`), because PostgreSQL often infers text for
//!   a bare `$1`. Objects and arrays are refused (cast to jsonb instead).
//! - `uuid`, `date`, `time`, `timetz`, `timestamp`, `timestamptz`,
//!   `interval`, `inet`, `cidr`: strings, forms in [`super::datetime`].
//! - `json`/`jsonb`: any JSON value, as is (a JSON string stays a string).
//! - `bytea`: base64 strings (padding optional).
//! - arrays of the above: JSON arrays, NULL elements allowed, nested
//!   rectangular arrays for several dimensions (not for json elements,
//!   where a nested array is a value).
//! - domains as their base type. Anything else is refused with a hint to
//!   cast in SQL (`$1::text::point`).
//!
//! Results, by SQL type: booleans; int2/int4/oid and float numbers; int8
//! as a number when exactly representable in a double (|v| <= 2^53), else
//! a string; `NaN`/`Infinity`/`-Infinity` floats as strings; numeric
//! always as an exact string; json/jsonb as the JSON value itself (big
//! numbers inside lose precision, serde_json holding doubles); bytea as
//! base64; date/time types and intervals as in [`super::datetime`];
//! arrays as nested JSON arrays (lower bounds ignored); `void` (what
//! `SELECT pg_sleep(1)` returns) as null. A column of
//! another type is refused before the statement runs, hinting `::text`.
//!
//! Column type names are PostgreSQL's own (`int8`, `timestamptz`, a
//! domain's or enum's name), with arrays written `int4[]` rather than the
//! catalog's `_int4`.

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use postgres_protocol::types as wire;
use serde_json::{Number, Value};
use tokio_postgres::types::{Kind, Type};

use super::{datetime, numeric};
use crate::error::{Reason, RouterError};

/// Base64 that accepts input with or without padding.
const BASE64_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);
/// PostgreSQL's limit on array dimensions.
const MAX_ARRAY_DIMS: usize = 6;
/// 2^53: integers up to this magnitude are exact in a JSON double.
const MAX_SAFE_INT: u64 = 1 << 53;

/// The value shapes this layer converts, after resolving domains and
/// enums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scalar {
    Bool,
    Int2,
    Int4,
    Int8,
    Oid,
    Float4,
    Float8,
    Numeric,
    Text,
    Char,
    Uuid,
    Date,
    Time,
    Timetz,
    Timestamp,
    Timestamptz,
    Interval,
    Json,
    Jsonb,
    Bytea,
    Inet,
    Cidr,
    /// The result of a function returning nothing: always NULL.
    Void,
}

/// The scalar shape of a type, or `None` when unsupported (arrays too).
pub fn scalar_of(ty: &Type) -> Option<Scalar> {
    match ty.kind() {
        Kind::Enum(_) => return Some(Scalar::Text),
        Kind::Domain(base) => return scalar_of(base),
        Kind::Simple | Kind::Pseudo => {}
        _ => return None,
    }
    Some(match *ty {
        Type::BOOL => Scalar::Bool,
        Type::INT2 => Scalar::Int2,
        Type::INT4 => Scalar::Int4,
        Type::INT8 => Scalar::Int8,
        Type::OID => Scalar::Oid,
        Type::FLOAT4 => Scalar::Float4,
        Type::FLOAT8 => Scalar::Float8,
        Type::NUMERIC => Scalar::Numeric,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => Scalar::Text,
        Type::CHAR => Scalar::Char,
        Type::UUID => Scalar::Uuid,
        Type::DATE => Scalar::Date,
        Type::TIME => Scalar::Time,
        Type::TIMETZ => Scalar::Timetz,
        Type::TIMESTAMP => Scalar::Timestamp,
        Type::TIMESTAMPTZ => Scalar::Timestamptz,
        Type::INTERVAL => Scalar::Interval,
        Type::JSON => Scalar::Json,
        Type::JSONB => Scalar::Jsonb,
        Type::BYTEA => Scalar::Bytea,
        Type::INET => Scalar::Inet,
        Type::CIDR => Scalar::Cidr,
        Type::VOID => Scalar::Void,
        // citext is an extension type; its binary form is text's.
        _ if ty.name() == "citext" => Scalar::Text,
        _ => return None,
    })
}

/// How a value of `ty` is converted: a scalar, or an array of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Scalar(Scalar),
    Array(Scalar),
}

/// The shape of `ty`, or `None` when this layer cannot convert it.
pub fn shape_of(ty: &Type) -> Option<Shape> {
    match ty.kind() {
        Kind::Array(elem) => scalar_of(elem).map(Shape::Array),
        Kind::Domain(base) => shape_of(base),
        _ => scalar_of(ty).map(Shape::Scalar),
    }
}

/// The type name shown to clients: `int8`, `text`, `int4[]`.
pub fn type_display(ty: &Type) -> String {
    match ty.kind() {
        Kind::Array(elem) => format!("{}[]", elem.name()),
        _ => ty.name().to_string(),
    }
}

/// One parameter, already in PostgreSQL's binary format (`None` = NULL).
/// Encoding happens before the statement is sent (see
/// [`encode_params`]), so this only copies bytes.
#[derive(Debug, Clone)]
pub struct EncodedParam(pub Option<Vec<u8>>);

fn invalid_param(message: String) -> RouterError {
    Reason::InvalidParameter {
        message,
        hint: None,
    }
    .into()
}

/// Encodes every parameter for the statement's parameter types.
pub fn encode_params(types: &[Type], params: &[Value]) -> Result<Vec<EncodedParam>, RouterError> {
    if types.len() != params.len() {
        return Err(invalid_param(format!(
            "expected {} parameter(s), got {}",
            types.len(),
            params.len()
        )));
    }
    types
        .iter()
        .zip(params)
        .enumerate()
        .map(|(i, (ty, v))| encode_param(i + 1, ty, v).map(EncodedParam))
        .collect()
}

/// Encodes the value of parameter `$n` for `ty`.
pub fn encode_param(n: usize, ty: &Type, value: &Value) -> Result<Option<Vec<u8>>, RouterError> {
    let Some(shape) = shape_of(ty) else {
        return Err(Reason::InvalidParameter {
            message: format!(
                "${n}: parameters of type {} are not supported",
                type_display(ty)
            ),
            hint: Some(format!(
                "cast the parameter in SQL and send a string, e.g. ${n}::text::{}",
                type_display(ty)
            )),
        }
        .into());
    };
    if value.is_null() {
        return Ok(None);
    }
    let mut out = Vec::new();
    let result = match shape {
        Shape::Scalar(s) => encode_scalar(s, value, &mut out),
        Shape::Array(s) => {
            let elem = match ty.kind() {
                Kind::Array(elem) => elem.oid(),
                Kind::Domain(base) => match base.kind() {
                    Kind::Array(elem) => elem.oid(),
                    _ => 0,
                },
                _ => 0,
            };
            encode_array(s, elem, value, &mut out)
        }
    };
    match result {
        Ok(()) => Ok(Some(out)),
        Err(why) => Err(invalid_param(format!(
            "${n}: expected {}, got {}{}",
            type_display(ty),
            describe(value),
            if why.is_empty() {
                String::new()
            } else {
                format!(" ({why})")
            }
        ))),
    }
}

/// A short description of a JSON value for error messages.
fn describe(v: &Value) -> String {
    const MAX: usize = 40;
    let short = |s: String| {
        if s.chars().count() > MAX {
            format!("{}…", s.chars().take(MAX).collect::<String>())
        } else {
            s
        }
    };
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {}", short(n.to_string())),
        Value::String(s) => format!("string {}", short(format!("{s:?}"))),
        Value::Array(a) => format!("an array of {} element(s)", a.len()),
        Value::Object(_) => "an object".into(),
    }
}

/// An integer from a JSON integer, an integral double up to 2^53, or a
/// decimal string.
fn integer(v: &Value) -> Result<i128, String> {
    match v {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Ok(i128::from(i))
            } else if let Some(u) = n.as_u64() {
                Ok(i128::from(u))
            } else {
                match n.as_f64() {
                    Some(f) if f.fract() == 0.0 && f.abs() <= MAX_SAFE_INT as f64 => Ok(f as i128),
                    _ => Err("not an integer".into()),
                }
            }
        }
        Value::String(s) if s.len() <= 40 => s.parse::<i128>().map_err(|_| "not an integer".into()),
        _ => Err(String::new()),
    }
}

fn ranged<T: TryFrom<i128>>(v: &Value) -> Result<T, String> {
    T::try_from(integer(v)?).map_err(|_| "out of range".into())
}

fn float(v: &Value) -> Result<f64, String> {
    match v {
        Value::Number(n) => n.as_f64().ok_or_else(String::new),
        Value::String(s) => s.parse::<f64>().map_err(|_| "not a number".into()),
        _ => Err(String::new()),
    }
}

fn string(v: &Value) -> Result<&str, String> {
    v.as_str().ok_or_else(String::new)
}

fn encode_scalar(s: Scalar, v: &Value, out: &mut Vec<u8>) -> Result<(), String> {
    match s {
        Scalar::Bool => match v {
            Value::Bool(b) => out.push(u8::from(*b)),
            _ => return Err(String::new()),
        },
        Scalar::Int2 => out.extend_from_slice(&ranged::<i16>(v)?.to_be_bytes()),
        Scalar::Int4 => out.extend_from_slice(&ranged::<i32>(v)?.to_be_bytes()),
        Scalar::Int8 => out.extend_from_slice(&ranged::<i64>(v)?.to_be_bytes()),
        Scalar::Oid => out.extend_from_slice(&ranged::<u32>(v)?.to_be_bytes()),
        Scalar::Float4 => {
            let f = float(v)?;
            let narrow = f as f32;
            if f.is_finite() && !narrow.is_finite() {
                return Err("out of range for float4".into());
            }
            out.extend_from_slice(&narrow.to_be_bytes());
        }
        Scalar::Float8 => out.extend_from_slice(&float(v)?.to_be_bytes()),
        Scalar::Numeric => match v {
            Value::Number(n) => numeric::encode(&n.to_string(), out)?,
            Value::String(s) => numeric::encode(s, out)?,
            _ => return Err(String::new()),
        },
        Scalar::Text => match v {
            Value::String(s) => out.extend_from_slice(s.as_bytes()),
            Value::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
            Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
            _ => return Err("cast the parameter to jsonb to send JSON".into()),
        },
        Scalar::Char => {
            let s = string(v)?;
            match s.as_bytes() {
                [] => out.push(0),
                [b] => out.push(*b),
                _ => return Err("\"char\" holds one byte".into()),
            }
        }
        Scalar::Uuid => out.extend_from_slice(&parse_uuid(string(v)?)?),
        Scalar::Date => out.extend_from_slice(&datetime::parse_date(string(v)?)?.to_be_bytes()),
        Scalar::Time => out.extend_from_slice(&datetime::parse_time(string(v)?)?.to_be_bytes()),
        Scalar::Timetz => {
            let (t, zone) = datetime::parse_timetz(string(v)?)?;
            out.extend_from_slice(&t.to_be_bytes());
            out.extend_from_slice(&zone.to_be_bytes());
        }
        Scalar::Timestamp | Scalar::Timestamptz => {
            let t = datetime::parse_timestamp(string(v)?, s == Scalar::Timestamptz)?;
            out.extend_from_slice(&t.to_be_bytes());
        }
        Scalar::Interval => {
            let (months, days, usecs) = datetime::parse_interval(string(v)?)?;
            out.extend_from_slice(&usecs.to_be_bytes());
            out.extend_from_slice(&days.to_be_bytes());
            out.extend_from_slice(&months.to_be_bytes());
        }
        Scalar::Json => out.extend_from_slice(v.to_string().as_bytes()),
        Scalar::Jsonb => {
            out.push(1);
            out.extend_from_slice(v.to_string().as_bytes());
        }
        Scalar::Bytea => {
            let decoded = BASE64_LENIENT
                .decode(string(v)?)
                .map_err(|_| "not base64")?;
            out.extend_from_slice(&decoded);
        }
        Scalar::Inet | Scalar::Cidr => encode_inet(string(v)?, s == Scalar::Cidr, out)?,
        Scalar::Void => return Err("void takes only null".into()),
    }
    Ok(())
}

fn parse_uuid(s: &str) -> Result<[u8; 16], String> {
    let hex: Vec<u8> = match s.len() {
        36 if [8, 13, 18, 23].iter().all(|&i| s.as_bytes()[i] == b'-') => {
            s.bytes().filter(|&b| b != b'-').collect()
        }
        32 => s.bytes().collect(),
        _ => return Err("not a UUID".into()),
    };
    if hex.len() != 32 || !hex.iter().all(u8::is_ascii_hexdigit) {
        return Err("not a UUID".into());
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        let digit = |b: u8| (b as char).to_digit(16).unwrap_or(0) as u8;
        out[i] = digit(pair[0]) << 4 | digit(pair[1]);
    }
    Ok(out)
}

/// PostgreSQL's address families in the inet binary form.
const PGSQL_AF_INET: u8 = 2;
const PGSQL_AF_INET6: u8 = 3;

fn encode_inet(s: &str, cidr: bool, out: &mut Vec<u8>) -> Result<(), String> {
    let (addr, bits) = match s.split_once('/') {
        Some((a, b)) => (a, Some(b.parse::<u8>().map_err(|_| "bad netmask")?)),
        None => (s, None),
    };
    let addr: std::net::IpAddr = addr.parse().map_err(|_| "not an IP address")?;
    let (family, bytes) = match addr {
        std::net::IpAddr::V4(a) => (PGSQL_AF_INET, a.octets().to_vec()),
        std::net::IpAddr::V6(a) => (PGSQL_AF_INET6, a.octets().to_vec()),
    };
    let max = (bytes.len() * 8) as u8;
    let bits = bits.unwrap_or(max);
    if bits > max {
        return Err("netmask too long".into());
    }
    out.extend_from_slice(&[family, bits, u8::from(cidr), bytes.len() as u8]);
    out.extend_from_slice(&bytes);
    Ok(())
}

/// Encodes a JSON array as a PostgreSQL array of `elem` (whose type OID
/// is `elem_oid`).
fn encode_array(elem: Scalar, elem_oid: u32, v: &Value, out: &mut Vec<u8>) -> Result<(), String> {
    let Value::Array(top) = v else {
        return Err("a JSON array is needed".into());
    };
    // JSON arrays nest into dimensions, except for json elements, where a
    // nested array is an element's value.
    let nests = !matches!(elem, Scalar::Json | Scalar::Jsonb);
    let mut dims = vec![top.len()];
    if nests {
        let mut cur = top.first();
        while let Some(Value::Array(a)) = cur {
            dims.push(a.len());
            if dims.len() > MAX_ARRAY_DIMS {
                return Err(format!("more than {MAX_ARRAY_DIMS} dimensions"));
            }
            cur = a.first();
        }
    }
    let mut elems = Vec::new();
    flatten(top, &dims, nests, &mut elems)?;
    let has_null = elems.iter().any(|e| e.is_null());
    if elems.is_empty() {
        dims.clear();
    }
    out.extend_from_slice(&(dims.len() as i32).to_be_bytes());
    out.extend_from_slice(&i32::from(has_null).to_be_bytes());
    out.extend_from_slice(&elem_oid.to_be_bytes());
    for d in &dims {
        let len = i32::try_from(*d).map_err(|_| "array too long")?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&1i32.to_be_bytes());
    }
    for (i, e) in elems.iter().enumerate() {
        if e.is_null() {
            out.extend_from_slice(&(-1i32).to_be_bytes());
            continue;
        }
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        encode_scalar(elem, e, out).map_err(|why| {
            let what = format!("element {} is {}", i + 1, describe(e));
            if why.is_empty() {
                what
            } else {
                format!("{what}: {why}")
            }
        })?;
        let len = i32::try_from(out.len() - at - 4).map_err(|_| "element too long")?;
        out[at..at + 4].copy_from_slice(&len.to_be_bytes());
    }
    Ok(())
}

/// Checks that `values` is rectangular with extents `dims` and collects
/// its elements in row-major order.
fn flatten<'v>(
    values: &'v [Value],
    dims: &[usize],
    nests: bool,
    out: &mut Vec<&'v Value>,
) -> Result<(), String> {
    if values.len() != dims[0] {
        return Err("a multi-dimensional array must be rectangular".into());
    }
    for v in values {
        match (dims.len() > 1, v) {
            (true, Value::Array(inner)) => flatten(inner, &dims[1..], nests, out)?,
            (true, _) => return Err("a multi-dimensional array must be rectangular".into()),
            (false, Value::Array(_)) if nests => {
                return Err("a multi-dimensional array must be rectangular".into())
            }
            (false, v) => out.push(v),
        }
    }
    Ok(())
}

/// Decodes one column value (`None` = NULL) of type `ty`.
pub fn decode_column(ty: &Type, raw: Option<&[u8]>) -> Result<Value, String> {
    let Some(raw) = raw else {
        return Ok(Value::Null);
    };
    match shape_of(ty) {
        Some(Shape::Scalar(s)) => decode_scalar(s, raw),
        Some(Shape::Array(s)) => decode_array(s, raw),
        None => Err(format!("type {} is not supported", type_display(ty))),
    }
}

type DecodeResult = Result<Value, Box<dyn std::error::Error + Sync + Send>>;

fn decode_array(elem: Scalar, raw: &[u8]) -> Result<Value, String> {
    // ndim, has-null flag, element OID, then (length, lower bound) per
    // dimension, then each element as length (-1 = NULL) and bytes.
    let mut rest = raw;
    let next_i32 = |rest: &mut &[u8]| -> Result<i32, String> {
        let (head, tail) = rest.split_first_chunk::<4>().ok_or("truncated array")?;
        *rest = tail;
        Ok(i32::from_be_bytes(*head))
    };
    let ndim = usize::try_from(next_i32(&mut rest)?).map_err(|_| "malformed array")?;
    if ndim > MAX_ARRAY_DIMS {
        return Err("malformed array".into());
    }
    let _has_null = next_i32(&mut rest)?;
    let _elem_oid = next_i32(&mut rest)?;
    let mut dims = Vec::with_capacity(ndim);
    for _ in 0..ndim {
        dims.push(usize::try_from(next_i32(&mut rest)?).map_err(|_| "malformed array")?);
        let _lower_bound = next_i32(&mut rest)?;
    }
    if ndim == 0 {
        return Ok(Value::Array(Vec::new()));
    }
    let count = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or("malformed array")?;
    let mut values = Vec::with_capacity(count.min(rest.len() / 4));
    for _ in 0..count {
        let len = next_i32(&mut rest)?;
        if len < 0 {
            values.push(Value::Null);
            continue;
        }
        let len = len as usize;
        if rest.len() < len {
            return Err("truncated array".into());
        }
        let (bytes, tail) = rest.split_at(len);
        rest = tail;
        values.push(decode_scalar(elem, bytes)?);
    }
    if !rest.is_empty() {
        return Err("trailing bytes after array".into());
    }
    Ok(nest(&dims, &mut values.into_iter()))
}

/// Rebuilds nested JSON arrays from row-major elements.
fn nest(dims: &[usize], elems: &mut impl Iterator<Item = Value>) -> Value {
    match dims {
        [] => elems.next().unwrap_or(Value::Null),
        [n, rest @ ..] => Value::Array((0..*n).map(|_| nest(rest, elems)).collect()),
    }
}

fn float_value(f: f64) -> Value {
    match Number::from_f64(f) {
        Some(n) => Value::Number(n),
        None if f.is_nan() => Value::String("NaN".into()),
        None if f > 0.0 => Value::String("Infinity".into()),
        None => Value::String("-Infinity".into()),
    }
}

fn decode_scalar(s: Scalar, raw: &[u8]) -> Result<Value, String> {
    decode_scalar_inner(s, raw).map_err(|e| e.to_string())
}

fn decode_scalar_inner(s: Scalar, raw: &[u8]) -> DecodeResult {
    Ok(match s {
        Scalar::Bool => Value::Bool(wire::bool_from_sql(raw)?),
        Scalar::Int2 => Value::from(wire::int2_from_sql(raw)?),
        Scalar::Int4 => Value::from(wire::int4_from_sql(raw)?),
        Scalar::Oid => Value::from(wire::oid_from_sql(raw)?),
        Scalar::Int8 => {
            let v = wire::int8_from_sql(raw)?;
            if v.unsigned_abs() <= MAX_SAFE_INT {
                Value::from(v)
            } else {
                Value::String(v.to_string())
            }
        }
        // Through f32's shortest text, so 0.1f32 reads 0.1, not
        // 0.10000000149011612.
        Scalar::Float4 => {
            let f = wire::float4_from_sql(raw)?;
            float_value(f.to_string().parse::<f64>().unwrap_or(f64::from(f)))
        }
        Scalar::Float8 => float_value(wire::float8_from_sql(raw)?),
        Scalar::Numeric => Value::String(numeric::decode(raw)?),
        Scalar::Text => Value::String(wire::text_from_sql(raw)?.to_string()),
        Scalar::Char => {
            // As PostgreSQL prints it: high bytes in octal.
            let b = wire::char_from_sql(raw)? as u8;
            Value::String(match b {
                0 => String::new(),
                1..=127 => char::from(b).to_string(),
                _ => format!("\\{b:03o}"),
            })
        }
        Scalar::Uuid => {
            let b = wire::uuid_from_sql(raw)?;
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            Value::String(format!(
                "{}-{}-{}-{}-{}",
                &hex[0..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..32]
            ))
        }
        Scalar::Date => Value::String(datetime::format_date(wire::date_from_sql(raw)?)),
        Scalar::Time => Value::String(datetime::format_time(wire::time_from_sql(raw)?)),
        Scalar::Timetz => {
            let (t, z) = match raw {
                [t @ .., z0, z1, z2, z3] if t.len() == 8 => (
                    wire::time_from_sql(t)?,
                    i32::from_be_bytes([*z0, *z1, *z2, *z3]),
                ),
                _ => return Err("malformed timetz".into()),
            };
            Value::String(datetime::format_timetz(t, z))
        }
        Scalar::Timestamp | Scalar::Timestamptz => {
            let t = wire::timestamp_from_sql(raw)?;
            Value::String(datetime::format_timestamp(t, s == Scalar::Timestamptz))
        }
        Scalar::Interval => {
            let [u @ .., d0, d1, d2, d3, m0, m1, m2, m3] = raw else {
                return Err("malformed interval".into());
            };
            let usecs = wire::int8_from_sql(u)?;
            let days = i32::from_be_bytes([*d0, *d1, *d2, *d3]);
            let months = i32::from_be_bytes([*m0, *m1, *m2, *m3]);
            Value::String(datetime::format_interval(months, days, usecs))
        }
        Scalar::Json => serde_json::from_slice(raw)?,
        Scalar::Jsonb => match raw.split_first() {
            Some((1, text)) => serde_json::from_slice(text)?,
            _ => return Err("unknown jsonb format version".into()),
        },
        Scalar::Bytea => Value::String(STANDARD.encode(raw)),
        Scalar::Inet | Scalar::Cidr => {
            let inet = wire::inet_from_sql(raw)?;
            let full = if inet.addr().is_ipv4() { 32 } else { 128 };
            if s == Scalar::Inet && inet.netmask() == full {
                Value::String(inet.addr().to_string())
            } else {
                Value::String(format!("{}/{}", inet.addr(), inet.netmask()))
            }
        }
        Scalar::Void => Value::Null,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn enc(ty: Type, v: Value) -> Result<Option<Vec<u8>>, RouterError> {
        encode_param(1, &ty, &v)
    }

    fn round(ty: Type, v: Value) -> Value {
        let bytes = enc(ty.clone(), v).unwrap();
        decode_column(&ty, bytes.as_deref()).unwrap()
    }

    #[test]
    fn integers() {
        assert_eq!(
            round(Type::INT8, json!(9007199254740992i64)),
            json!(9007199254740992i64)
        );
        assert_eq!(
            round(Type::INT8, json!("9007199254740993")),
            json!("9007199254740993")
        );
        assert_eq!(
            round(Type::INT8, json!(i64::MIN)),
            json!(i64::MIN.to_string())
        );
        assert_eq!(round(Type::INT2, json!(-32768)), json!(-32768));
        assert_eq!(round(Type::INT4, json!(3.0)), json!(3));
        let e = enc(Type::INT2, json!(32768)).unwrap_err();
        assert_eq!(e.code(), shardline_api::ErrorCode::InvalidParameter);
        assert!(
            e.message().contains("$1") && e.message().contains("int2"),
            "{}",
            e.message()
        );
        assert!(enc(Type::INT4, json!(1.5)).is_err());
        assert!(enc(Type::INT4, json!("x")).is_err());
        assert!(enc(Type::INT4, json!(true)).is_err());
        assert!(enc(Type::INT8, json!(u64::MAX)).is_err());
        assert!(enc(Type::OID, json!(-1)).is_err());
    }

    #[test]
    fn floats_text_and_misc() {
        assert_eq!(round(Type::FLOAT4, json!(0.1)), json!(0.1));
        assert_eq!(round(Type::FLOAT8, json!("NaN")), json!("NaN"));
        assert_eq!(round(Type::FLOAT8, json!("-Infinity")), json!("-Infinity"));
        assert!(enc(Type::FLOAT4, json!(1e300)).is_err());
        assert_eq!(round(Type::TEXT, json!(42)), json!("42"));
        assert_eq!(round(Type::TEXT, json!(false)), json!("false"));
        assert!(enc(Type::TEXT, json!({"a": 1})).is_err());
        let u = "018f4b8e-37f0-7cc4-b5f2-0f62d09ca662";
        assert_eq!(round(Type::UUID, json!(u)), json!(u));
        assert_eq!(
            round(Type::UUID, json!(u.to_uppercase().replace('-', ""))),
            json!(u)
        );
        assert!(enc(Type::UUID, json!("018f4b8e-37f0-7cc4-b5f2-0f62d09ca66")).is_err());
        assert!(enc(Type::UUID, json!("+18f4b8e-37f0-7cc4-b5f2-0f62d09ca662")).is_err());
        assert!(enc(Type::UUID, json!("018f4b8e-37f0-7cc4-b5f2-0f62d09c-662")).is_err());
        assert!(enc(Type::UUID, json!("018f4b8e-37f0-7cc4-b5f2-0f62d09ca6éé")).is_err());
        assert_eq!(round(Type::BYTEA, json!("AAEC/w")), json!("AAEC/w=="));
        assert_eq!(
            round(Type::JSONB, json!({"a": [1, null]})),
            json!({"a": [1, null]})
        );
        assert_eq!(round(Type::INET, json!("10.0.0.1")), json!("10.0.0.1"));
        assert_eq!(round(Type::INET, json!("::1")), json!("::1"));
        assert_eq!(round(Type::CIDR, json!("10.0.0.0/8")), json!("10.0.0.0/8"));
        assert_eq!(round(Type::CHAR, json!("x")), json!("x"));
        assert_eq!(enc(Type::BOOL, Value::Null).unwrap(), None);
        let e = enc(Type::POINT, json!("(1,2)")).unwrap_err();
        assert!(e.hint().unwrap().contains("$1::text::point"));
    }

    #[test]
    fn arrays() {
        let v = json!([1, null, 3]);
        assert_eq!(round(Type::INT4_ARRAY, v.clone()), v);
        let v = json!([[1, 2], [3, 4], [5, null]]);
        assert_eq!(round(Type::INT8_ARRAY, v.clone()), v);
        assert_eq!(round(Type::TEXT_ARRAY, json!([])), json!([]));
        assert_eq!(round(Type::TEXT_ARRAY, json!([[]])), json!([]));
        let v = json!([[1, 2], {"a": 1}]);
        assert_eq!(round(Type::JSONB_ARRAY, v.clone()), v);
        assert!(enc(Type::INT4_ARRAY, json!([[1, 2], [3]])).is_err());
        assert!(enc(Type::INT4_ARRAY, json!([1, [2]])).is_err());
        let e = enc(Type::INT4_ARRAY, json!([1, "x"])).unwrap_err();
        assert!(e.message().contains("element 2"), "{}", e.message());
        assert!(enc(Type::INT4_ARRAY, json!(1)).is_err());
    }

    #[test]
    fn count_mismatch() {
        let e = encode_params(&[Type::INT4], &[]).unwrap_err();
        assert!(
            e.message().contains("expected 1 parameter(s), got 0"),
            "{}",
            e.message()
        );
    }

    #[test]
    fn display_names() {
        assert_eq!(type_display(&Type::INT4_ARRAY), "int4[]");
        assert_eq!(type_display(&Type::TIMESTAMPTZ), "timestamptz");
    }
}
