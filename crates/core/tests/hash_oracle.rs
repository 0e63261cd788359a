//! The routing hash against PostgreSQL itself: `h` for random text
//! (multi-byte UTF-8 included), bigint and uuid keys, and the SQL of
//! `sql_routing_hash` and `sql_in_range` over random and edge ranges.
//!
//! The RNG seed is printed; set `SHARDLINE_ORACLE_SEED` to replay one.

use std::collections::BTreeSet;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shardline_core::hash::{
    partition_hash, routing_hash, sql_hash, sql_in_range, sql_routing_hash, KeyType, ShardKey,
    HASH_PARTITION_SEED, ROUTING_OFFSET,
};
use shardline_core::keyrange::KeyRange;
use shardline_core::shardmap::ShardMap;
use shardline_testkit::PgCluster;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

const TEXT_KEYS: usize = 12_000;
const BIGINT_KEYS: usize = 12_000;
const UUID_KEYS: usize = 3_000;

/// A random char of exactly `width` UTF-8 bytes (no NUL: text cannot hold it).
fn random_char(rng: &mut StdRng, width: usize) -> char {
    let range = match width {
        1 => 1..=0x7f,
        2 => 0x80..=0x7ff,
        3 => 0x800..=0xffff,
        _ => 0x1_0000..=0x10_ffff,
    };
    loop {
        // Surrogates are not chars; draw again.
        if let Some(c) = char::from_u32(rng.random_range(range.clone())) {
            return c;
        }
    }
}

/// A random string of exactly `len` bytes: ASCII only, multi-byte only
/// (as far as the length allows), or a mix of 1- to 4-byte chars.
fn random_text(rng: &mut StdRng, len: usize) -> String {
    let style = rng.random_range(0..3);
    let mut s = String::with_capacity(len);
    while s.len() < len {
        let room = len - s.len();
        let width = match style {
            0 => 1,
            1 => rng.random_range(2..=4),
            _ => rng.random_range(1..=4),
        };
        s.push(random_char(rng, width.min(room)));
    }
    s
}

fn text_keys(rng: &mut StdRng) -> Vec<String> {
    let mut keys = vec![String::new(), "tenant-1".into(), "é".into(), "😀".into()];
    // Every tail length of lookup3 at least once, in each style.
    for len in 0..=36 {
        keys.push(random_text(rng, len));
    }
    while keys.len() < TEXT_KEYS {
        let len = rng.random_range(0..=200);
        keys.push(random_text(rng, len));
    }
    keys
}

fn bigint_keys(rng: &mut StdRng) -> Vec<i64> {
    let mut keys = vec![
        i64::MIN,
        i64::MAX,
        0,
        -1,
        1,
        42,
        i64::from(i32::MIN),
        i64::from(i32::MAX),
        i64::from(u32::MAX),
        1 << 32,
        -(1 << 32),
        i64::MIN + 1,
        i64::MAX - 1,
    ];
    while keys.len() < BIGINT_KEYS {
        let v = match rng.random_range(0..3) {
            0 => rng.random::<i64>(),
            1 => rng.random_range(-1000..=1000),
            // Random magnitude, so every width of value shows up.
            _ => rng.random::<i64>() >> rng.random_range(0..64),
        };
        keys.push(v);
    }
    keys
}

/// Random UUIDs written in every form `uuid_in` accepts.
fn uuid_keys(rng: &mut StdRng) -> Vec<String> {
    let mut raw: Vec<[u8; 16]> = vec![[0; 16], [0xff; 16]];
    while raw.len() < UUID_KEYS {
        raw.push(rng.random());
    }
    raw.iter()
        .map(|b| {
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            let canonical = format!(
                "{}-{}-{}-{}-{}",
                &hex[..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..]
            );
            match rng.random_range(0..5) {
                0 => canonical,
                1 => canonical.to_uppercase(),
                2 => hex,
                3 => format!("{{{canonical}}}"),
                _ => hex
                    .as_bytes()
                    .chunks(4)
                    .map(|c| std::str::from_utf8(c).unwrap())
                    .collect::<Vec<_>>()
                    .join("-"),
            }
        })
        .collect()
}

/// Ranges worth checking for keys with routing hashes `hashes`: the
/// whole space, the ranges of even maps (first and last included),
/// ranges whose shifted bounds cross the signed wrap-around or 0, random
/// ranges, and ranges bounded exactly at keys' hashes.
fn ranges_to_check(rng: &mut StdRng, hashes: &[u64]) -> Vec<KeyRange> {
    let mut out = BTreeSet::new();
    out.insert(KeyRange::FULL);
    for n in [2usize, 3, 4, 7, 16] {
        let names: Vec<String> = (0..n).map(|i| format!("s{i}")).collect();
        out.extend(
            ShardMap::even(&names)
                .unwrap()
                .ranges()
                .iter()
                .map(|r| r.range),
        );
    }
    // Routing hashes where h is i64::MIN and where h is 0.
    let wrap = (1u64 << 63).wrapping_add(ROUTING_OFFSET);
    let zero = ROUTING_OFFSET;
    for p in [wrap, zero] {
        out.insert(KeyRange {
            start: p,
            end: None,
        });
        out.insert(KeyRange {
            start: 0,
            end: Some(p),
        });
        out.insert(KeyRange {
            start: p - 1,
            end: Some(p + 1),
        });
        out.insert(KeyRange {
            start: p - (1 << 60),
            end: Some(p + (1 << 60)),
        });
        out.insert(KeyRange {
            start: p - (1 << 60),
            end: Some(p),
        });
        out.insert(KeyRange {
            start: p,
            end: Some(p + (1 << 60)),
        });
    }
    for _ in 0..120 {
        let (a, b) = (rng.random::<u64>(), rng.random::<u64>());
        if a == b {
            continue;
        }
        let end = if rng.random_bool(0.1) {
            None
        } else {
            Some(a.max(b))
        };
        out.insert(KeyRange {
            start: a.min(b),
            end,
        });
    }
    // Exactly at keys: one-hash ranges and half-spaces either side.
    for _ in 0..40 {
        let r = hashes[rng.random_range(0..hashes.len())];
        out.insert(KeyRange {
            start: r,
            end: r.checked_add(1),
        });
        out.insert(KeyRange {
            start: r,
            end: None,
        });
        if r > 0 {
            out.insert(KeyRange {
                start: 0,
                end: Some(r),
            });
        }
    }
    // The keys on either side of the signed wrap-around of h: a range
    // from one to just past the other crosses it in SQL.
    let h_of = |r: u64| r.wrapping_sub(ROUTING_OFFSET) as i64;
    if let (Some(&hi), Some(&lo)) = (
        hashes.iter().max_by_key(|&&r| h_of(r)),
        hashes.iter().min_by_key(|&&r| h_of(r)),
    ) {
        if hi < lo {
            out.insert(KeyRange {
                start: hi,
                end: lo.checked_add(1),
            });
        }
    }
    out.into_iter().collect()
}

struct Outcome {
    keys: usize,
    ranges: usize,
}

/// Loads the keys into a table, compares PostgreSQL's `h` and our SQL's
/// routing hash with ours, then every range predicate.
async fn check(
    db: &Client,
    rng: &mut StdRng,
    key_type: KeyType,
    sql_type: &str,
    param: &(dyn ToSql + Sync),
    param_type: &str,
    ours: &[u64],
) -> Outcome {
    let table = format!("keys_{sql_type}");
    db.batch_execute(&format!(
        "CREATE TABLE {table} (i int PRIMARY KEY, k {sql_type} NOT NULL)"
    ))
    .await
    .unwrap();
    let inserted = db
        .execute(
            &format!("INSERT INTO {table} SELECT i, s::{sql_type} FROM unnest($1::{param_type}) WITH ORDINALITY AS t(s, i)"),
            &[param],
        )
        .await
        .unwrap();
    assert_eq!(inserted as usize, ours.len());

    let func = key_type.sql_hash_function();
    let rows = db
        .query(
            &format!(
                "SELECT i, {func}(k, {seed}), ({routing})::text FROM {table} ORDER BY i",
                seed = HASH_PARTITION_SEED as i64,
                routing = sql_routing_hash(key_type, "k"),
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), ours.len());
    let mut bad = 0;
    for (row, &routing) in rows.iter().zip(ours) {
        let i: i32 = row.get(0);
        let pg_h: i64 = row.get(1);
        let pg_routing: String = row.get(2);
        let want_h = routing.wrapping_sub(ROUTING_OFFSET) as i64;
        if pg_h != want_h || pg_routing != routing.to_string() {
            bad += 1;
            if bad <= 5 {
                let key: String = db
                    .query_one(&format!("SELECT k::text FROM {table} WHERE i = $1"), &[&i])
                    .await
                    .unwrap()
                    .get(0);
                eprintln!(
                    "{key_type:?} key #{i} {key:?}: PostgreSQL h={pg_h} routing={pg_routing}, ours h={want_h} routing={routing}"
                );
            }
        }
    }
    assert_eq!(
        bad,
        0,
        "{bad} of {} {key_type:?} keys disagree with PostgreSQL",
        ours.len()
    );

    // Range predicates, served by an index on h as resharding will use them.
    db.batch_execute(&format!(
        "CREATE INDEX ON {table} (({})); ANALYZE {table}",
        sql_hash(key_type, "k")
    ))
    .await
    .unwrap();
    let ranges = ranges_to_check(rng, ours);
    let mut wrapped = 0;
    for range in &ranges {
        let pred = sql_in_range(key_type, "k", range);
        wrapped += usize::from(pred.contains(" OR "));
        let got: Vec<i32> = db
            .query_one(
                &format!(
                    "SELECT coalesce(array_agg(i ORDER BY i), '{{}}') FROM {table} WHERE {pred}"
                ),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        let want: Vec<i32> = (1..)
            .zip(ours)
            .filter(|(_, &r)| range.contains(r))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(
            got, want,
            "{key_type:?} range {range} ({range:?}): predicate {pred}"
        );
    }
    assert!(wrapped > 0, "no range exercised the signed wrap-around");

    // The predicates are index-friendly, wrapped ones included.
    db.batch_execute("SET enable_seqscan = off").await.unwrap();
    for range in [
        KeyRange::parse("40-80").unwrap(),
        KeyRange::parse("80-").unwrap(),
    ] {
        let plan: Vec<String> = db
            .query(
                &format!(
                    "EXPLAIN SELECT i FROM {table} WHERE {}",
                    sql_in_range(key_type, "k", &range)
                ),
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let plan = plan.join("\n");
        assert!(
            plan.contains("Index Scan"),
            "range {range} does not use the index:\n{plan}"
        );
    }
    db.batch_execute("RESET enable_seqscan").await.unwrap();
    Outcome {
        keys: ours.len(),
        ranges: ranges.len(),
    }
}

#[tokio::test]
async fn routing_hash_matches_postgresql() {
    let seed = match std::env::var("SHARDLINE_ORACLE_SEED") {
        Ok(s) => s.parse().expect("SHARDLINE_ORACLE_SEED is a u64"),
        Err(_) => rand::rng().random(),
    };
    println!("hash oracle seed: {seed} (replay with SHARDLINE_ORACLE_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);

    let pg = PgCluster::start().await.unwrap();
    let db = pg.connect().await.unwrap();

    let texts = text_keys(&mut rng);
    let multibyte = texts
        .iter()
        .filter(|s| s.len() != s.chars().count())
        .count();
    let ours: Vec<u64> = texts
        .iter()
        .map(|s| routing_hash(ShardKey::Text(s)))
        .collect();
    let text = check(
        &db,
        &mut rng,
        KeyType::Text,
        "text",
        &texts,
        "text[]",
        &ours,
    )
    .await;

    let ints = bigint_keys(&mut rng);
    let ours: Vec<u64> = ints
        .iter()
        .map(|&v| routing_hash(ShardKey::Bigint(v)))
        .collect();
    let int = check(
        &db,
        &mut rng,
        KeyType::Bigint,
        "bigint",
        &ints,
        "bigint[]",
        &ours,
    )
    .await;

    let uuids = uuid_keys(&mut rng);
    let ours: Vec<u64> = uuids
        .iter()
        .map(|s| {
            let u =
                shardline_core::hash::parse_uuid(s).unwrap_or_else(|| panic!("parse_uuid({s:?})"));
            routing_hash(ShardKey::Uuid(u))
        })
        .collect();
    let uuid = check(
        &db,
        &mut rng,
        KeyType::Uuid,
        "uuid",
        &uuids,
        "text[]",
        &ours,
    )
    .await;

    // partition_hash is the un-offset h the checks above compared.
    assert_eq!(
        partition_hash(ShardKey::Bigint(0)).wrapping_add(ROUTING_OFFSET),
        routing_hash(ShardKey::Bigint(0))
    );
    println!(
        "checked against PostgreSQL: {} text keys ({multibyte} with multi-byte UTF-8) over {} ranges, \
         {} bigint keys over {} ranges, {} uuid keys over {} ranges",
        text.keys, text.ranges, int.keys, int.ranges, uuid.keys, uuid.ranges
    );
}
