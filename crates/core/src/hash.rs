//! The routing hash: PostgreSQL's own hash-partitioning hash.
//!
//! `h = hash<type>extended(key, HASH_PARTITION_SEED)`, then
//! `routing = h + ROUTING_OFFSET (mod 2^64)`, exactly what PostgreSQL
//! computes for a single-column hash partition key, so PostgreSQL can
//! compute it in SQL (see [`sql_routing_hash`] and [`sql_in_range`]).

use serde::{Deserialize, Serialize};

use crate::keyrange::KeyRange;

/// PostgreSQL's `HASH_PARTITION_SEED`.
pub const HASH_PARTITION_SEED: u64 = 0x7A5B22367996DCFD;
/// The constant `hash_combine64` adds when combining into a zero hash.
pub const ROUTING_OFFSET: u64 = 0x49a0f4dd15e5a8e3;

/// How a keyspace's shard keys are typed and hashed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum KeyType {
    /// UTF-8 text, hashed like `hashtextextended`.
    #[default]
    Text,
    /// 64-bit signed integer, hashed like `hashint8extended`.
    Bigint,
    /// UUID, hashed like `uuid_hash_extended`.
    Uuid,
}

impl KeyType {
    /// The PostgreSQL function computing `h` for this key type.
    pub fn sql_hash_function(self) -> &'static str {
        match self {
            KeyType::Text => "hashtextextended",
            KeyType::Bigint => "hashint8extended",
            KeyType::Uuid => "uuid_hash_extended",
        }
    }
}

/// A typed shard key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardKey<'a> {
    Text(&'a str),
    Bigint(i64),
    Uuid([u8; 16]),
}

/// lookup3's initial state constant (the golden ratio) as PostgreSQL uses it.
const GOLDEN: u32 = 0x9e3779b9;
/// PostgreSQL adds this to the initial state, on top of the length.
const PG_INIT_SALT: u32 = 3923095;

#[inline(always)]
fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(4);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(6);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(8);
    *b = b.wrapping_add(*a);
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(16);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(19);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(4);
    *b = b.wrapping_add(*a);
}

#[inline(always)]
fn final_mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(14));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(11));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(25));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(16));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(4));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(14));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(24));
}

/// The lookup3 state after the length and seed, shared by the byte and the
/// 32-bit variants.
#[inline(always)]
fn init_state(len: u32, seed: u64) -> (u32, u32, u32) {
    let init = GOLDEN.wrapping_add(len).wrapping_add(PG_INIT_SALT);
    let (mut a, mut b, mut c) = (init, init, init);
    // PostgreSQL treats a non-zero seed as padding after the data; a zero
    // seed leaves the state untouched so the result equals the 32-bit hash.
    if seed != 0 {
        a = a.wrapping_add((seed >> 32) as u32);
        b = b.wrapping_add(seed as u32);
        mix(&mut a, &mut b, &mut c);
    }
    (a, b, c)
}

#[inline(always)]
fn le32(k: &[u8]) -> u32 {
    u32::from_le_bytes([k[0], k[1], k[2], k[3]])
}

/// PostgreSQL's `hash_bytes_extended` (Bob Jenkins' lookup3).
///
/// Bytes are read little-endian, as PostgreSQL does on little-endian
/// machines, so the result is the same as on the usual PostgreSQL servers.
pub fn hash_bytes_extended(data: &[u8], seed: u64) -> u64 {
    // PostgreSQL takes the length as a C int and folds it into a uint32;
    // keys over 4 GiB are not keys, so truncation matches its behaviour.
    let (mut a, mut b, mut c) = init_state(data.len() as u32, seed);

    let mut blocks = data.chunks_exact(12);
    for k in &mut blocks {
        a = a.wrapping_add(le32(&k[0..4]));
        b = b.wrapping_add(le32(&k[4..8]));
        c = c.wrapping_add(le32(&k[8..12]));
        mix(&mut a, &mut b, &mut c);
    }

    // The last 0-11 bytes: a and b take theirs little-endian; c's lowest
    // byte stays free (PostgreSQL's "reserved for the length"), so bytes
    // 8..11 land one byte higher.
    let tail = blocks.remainder();
    let mut buf = [0u8; 12];
    buf[..tail.len()].copy_from_slice(tail);
    a = a.wrapping_add(le32(&buf[0..4]));
    b = b.wrapping_add(le32(&buf[4..8]));
    c = c.wrapping_add(le32(&buf[8..12]) << 8);

    final_mix(&mut a, &mut b, &mut c);
    ((b as u64) << 32) | c as u64
}

/// PostgreSQL's `hash_uint32_extended`: lookup3 of one 32-bit word.
pub fn hash_uint32_extended(k: u32, seed: u64) -> u64 {
    let (mut a, mut b, mut c) = init_state(4, seed);
    a = a.wrapping_add(k);
    final_mix(&mut a, &mut b, &mut c);
    ((b as u64) << 32) | c as u64
}

/// PostgreSQL's `hashint8extended`.
///
/// Folds the high half into the low half (inverted for negative values,
/// so that small negative bigints hash like the same int4 value) and
/// hashes the resulting 32-bit word.
pub fn hashint8_extended(value: i64, seed: u64) -> u64 {
    let lo = value as u32;
    let hi = (value >> 32) as u32;
    let folded = if value >= 0 { lo ^ hi } else { lo ^ !hi };
    hash_uint32_extended(folded, seed)
}

/// PostgreSQL's hash of a key before the routing offset: the `h` that
/// `hash<type>extended(key, HASH_PARTITION_SEED)` returns (as unsigned).
pub fn partition_hash(key: ShardKey<'_>) -> u64 {
    match key {
        ShardKey::Text(s) => hash_bytes_extended(s.as_bytes(), HASH_PARTITION_SEED),
        ShardKey::Bigint(v) => hashint8_extended(v, HASH_PARTITION_SEED),
        ShardKey::Uuid(u) => hash_bytes_extended(&u, HASH_PARTITION_SEED),
    }
}

/// The routing hash of a key.
pub fn routing_hash(key: ShardKey<'_>) -> u64 {
    partition_hash(key).wrapping_add(ROUTING_OFFSET)
}

/// Parses a UUID in its canonical text form (hyphens optional,
/// case-insensitive).
///
/// Accepts exactly what PostgreSQL's `uuid_in` accepts: 32 hex digits,
/// optionally in braces, with an optional hyphen after any group of four
/// digits except the last, so a key PostgreSQL takes is a key we take.
pub fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let mut rest = s.as_bytes();
    let braces = rest.first() == Some(&b'{');
    if braces {
        rest = &rest[1..];
    }
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        let (hi, lo) = match rest {
            [h, l, ..] => (hex_val(*h)?, hex_val(*l)?),
            _ => return None,
        };
        *byte = (hi << 4) | lo;
        rest = &rest[2..];
        if i % 2 == 1 && i < 15 && rest.first() == Some(&b'-') {
            rest = &rest[1..];
        }
    }
    if braces {
        rest = rest.strip_prefix(b"}")?;
    }
    rest.is_empty().then_some(out)
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Formats a routing hash as 16 lowercase hex digits.
pub fn format_hash(h: u64) -> String {
    format!("{h:016x}")
}

/// A SQL expression for PostgreSQL's `h`: the signed `bigint`
/// `hash<type>extended(key, seed)` of `key_sql` (a column or expression
/// of the keyspace's key type). An index on this expression serves
/// [`sql_in_range`].
pub fn sql_hash(key_type: KeyType, key_sql: &str) -> String {
    format!(
        "{}(({key_sql}), {})",
        key_type.sql_hash_function(),
        HASH_PARTITION_SEED as i64
    )
}

/// A SQL expression (over the column or expression `key_sql`, of the
/// keyspace's key type) whose value is the key's routing hash as a
/// `numeric` in `[0, 2^64)`.
pub fn sql_routing_hash(key_type: KeyType, key_sql: &str) -> String {
    // numeric never overflows; adding 2^64 before the modulo keeps the
    // dividend positive, as `%` takes the dividend's sign.
    format!(
        "(({}::numeric + {ROUTING_OFFSET} + {two64}) % {two64})",
        sql_hash(key_type, key_sql),
        two64 = 1u128 << 64
    )
}

/// A boolean SQL predicate, true iff the routing hash of `key_sql` is in
/// `range` (NULL for a NULL key, which has no routing hash).
///
/// It compares the signed `h` of [`sql_hash`] with bigint constants (the
/// bounds shifted back by [`ROUTING_OFFSET`]), so it never overflows and
/// an index on `h` serves it. A shifted range that crosses the signed
/// wrap-around (from `i64::MAX` to `i64::MIN`) becomes `h >= a OR h < b`.
pub fn sql_in_range(key_type: KeyType, key_sql: &str, range: &KeyRange) -> String {
    let h = sql_hash(key_type, key_sql);
    if range.len_u128() >= 1 << 64 {
        return format!("({h} IS NOT NULL)");
    }
    let shift = |bound: u64| bound.wrapping_sub(ROUTING_OFFSET) as i64;
    let a = shift(range.start);
    // The open end is 2^64, which is 0 modulo 2^64.
    let b = shift(range.end.unwrap_or(0));
    // i64::MIN as a lower bound or upper bound is no constraint / empty,
    // which also keeps its literal (not valid SQL as a single token) out.
    match (a == i64::MIN, b == i64::MIN) {
        (true, _) => format!("({h} < {b})"),
        (false, true) => format!("({h} >= {a})"),
        (false, false) if a < b => format!("({h} >= {a} AND {h} < {b})"),
        (false, false) => format!("({h} >= {a} OR {h} < {b})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routing_hex(key: ShardKey<'_>) -> String {
        format_hash(routing_hash(key))
    }

    #[test]
    fn design_test_vectors() {
        assert_eq!(routing_hex(ShardKey::Bigint(0)), "0c8440b74fd699b0");
        assert_eq!(routing_hex(ShardKey::Bigint(1)), "9c7715e2970a8fb8");
        assert_eq!(routing_hex(ShardKey::Bigint(42)), "afd30d9a116a5a62");
        assert_eq!(routing_hex(ShardKey::Bigint(-1)), "0400bc251f3bafa5");
        assert_eq!(routing_hex(ShardKey::Text("tenant-1")), "d2da521dd4586553");
        let u = parse_uuid("018f4b8e-37f0-7cc4-b5f2-0f62d09ca662").unwrap();
        assert_eq!(routing_hex(ShardKey::Uuid(u)), "f31856aa28321023");
    }

    #[test]
    fn uint32_matches_bytes() {
        for k in [0u32, 1, 0xdead_beef, u32::MAX] {
            for seed in [0, 1, HASH_PARTITION_SEED] {
                assert_eq!(
                    hash_uint32_extended(k, seed),
                    hash_bytes_extended(&k.to_le_bytes(), seed)
                );
            }
        }
    }

    #[test]
    fn int8_folds_like_int4() {
        // PostgreSQL hashes small negative bigints like the same int4.
        assert_eq!(
            hashint8_extended(-5, 7),
            hash_uint32_extended(-5i32 as u32, 7)
        );
        assert_eq!(hashint8_extended(5, 7), hash_uint32_extended(5, 7));
    }

    #[test]
    fn parses_uuids() {
        let want = [
            0x01, 0x8f, 0x4b, 0x8e, 0x37, 0xf0, 0x7c, 0xc4, 0xb5, 0xf2, 0x0f, 0x62, 0xd0, 0x9c,
            0xa6, 0x62,
        ];
        for ok in [
            "018f4b8e-37f0-7cc4-b5f2-0f62d09ca662",
            "018F4B8E-37F0-7CC4-B5F2-0F62D09CA662",
            "018f4b8e37f07cc4b5f20f62d09ca662",
            "{018f4b8e-37f0-7cc4-b5f2-0f62d09ca662}",
            "018f-4b8e-37f0-7cc4-b5f2-0f62-d09c-a662",
        ] {
            assert_eq!(parse_uuid(ok), Some(want), "{ok}");
        }
        for bad in [
            "",
            "018f4b8e-37f0-7cc4-b5f2-0f62d09ca66",
            "018f4b8e-37f0-7cc4-b5f2-0f62d09ca6622",
            "018f4b8e-37f0-7cc4-b5f2-0f62d09ca662-",
            "-018f4b8e37f07cc4b5f20f62d09ca662",
            "018f4b8e--37f0-7cc4-b5f2-0f62d09ca662",
            "018f4b8e-37f0-7cc4-b5f2-0f62d09ca66g",
            "{018f4b8e-37f0-7cc4-b5f2-0f62d09ca662",
            "018f4b8e-37f0-7cc4-b5f2-0f62d09ca662}",
            "018f4b8-e37f0-7cc4-b5f2-0f62d09ca662",
            "018f4b8e-37f0-7cc4-b5f2-0f62d09ca6é",
        ] {
            assert_eq!(parse_uuid(bad), None, "{bad}");
        }
    }

    #[test]
    fn sql_expressions() {
        assert_eq!(
            sql_routing_hash(KeyType::Text, "k"),
            "((hashtextextended((k), 8816678312871386365)::numeric + 5305509591434766563 \
             + 18446744073709551616) % 18446744073709551616)"
        );
        assert_eq!(
            sql_in_range(KeyType::Bigint, "id", &KeyRange::FULL),
            "(hashint8extended((id), 8816678312871386365) IS NOT NULL)"
        );
        // 80- shifted back crosses the signed wrap-around.
        let upper = KeyRange {
            start: 1 << 63,
            end: None,
        };
        let p = sql_in_range(KeyType::Uuid, "u", &upper);
        assert!(p.contains(" OR "), "{p}");
        // A range starting where h is i64::MIN needs no lower bound.
        let at_min = KeyRange {
            start: (1u64 << 63).wrapping_add(ROUTING_OFFSET),
            end: None,
        };
        let p = sql_in_range(KeyType::Text, "k", &at_min);
        assert!(
            !p.contains(">=") && !p.contains("9223372036854775808"),
            "{p}"
        );
    }
}
