//! Property tests for the shard-map arithmetic.

use proptest::prelude::*;
use proptest::sample::Index;
use shardline_core::hash::{routing_hash, ShardKey};
use shardline_core::keyrange::KeyRange;
use shardline_core::shardmap::{ShardMap, ShardRange};

/// A valid map from up to 40 random inner boundaries and random owners.
fn arb_map() -> impl Strategy<Value = ShardMap> {
    let bound = prop_oneof![
        any::<u64>(),
        // Byte-aligned and edge values, as operators write them.
        any::<u8>().prop_map(|b| u64::from(b) << 56),
        Just(1u64),
        Just(u64::MAX),
    ];
    (
        prop::collection::vec(bound, 0..40),
        prop::collection::vec(0u8..8, 41),
    )
        .prop_map(|(mut bounds, owners)| {
            bounds.retain(|&b| b != 0);
            bounds.sort_unstable();
            bounds.dedup();
            let mut starts = vec![0];
            starts.extend(&bounds);
            let ranges = starts
                .iter()
                .enumerate()
                .map(|(i, &start)| ShardRange {
                    range: KeyRange {
                        start,
                        end: starts.get(i + 1).copied(),
                    },
                    shard: format!("s{}", owners[i]),
                })
                .collect();
            ShardMap::new(ranges).unwrap()
        })
}

/// Asserts the ranges are sorted, start at 0, touch, and reach the end.
fn assert_complete(ranges: &[ShardRange]) {
    assert_eq!(ranges[0].range.start, 0);
    for w in ranges.windows(2) {
        assert_eq!(w[0].range.end, Some(w[1].range.start));
        assert!(!w[0].range.is_empty());
    }
    assert_eq!(ranges[ranges.len() - 1].range.end, None);
}

fn linear_owner(map: &ShardMap, h: u64) -> usize {
    let owners: Vec<usize> = (0..map.ranges().len())
        .filter(|&i| map.ranges()[i].range.contains(h))
        .collect();
    assert_eq!(
        owners.len(),
        1,
        "hash {h:016x} is in {} ranges",
        owners.len()
    );
    owners[0]
}

fn assert_lookup(map: &ShardMap, h: u64) {
    let want = &map.ranges()[linear_owner(map, h)];
    assert!(std::ptr::eq(map.lookup(h), want), "lookup({h:016x})");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_hash_has_exactly_one_range(map in arb_map(), hashes in prop::collection::vec(any::<u64>(), 32),
                                        text in ".{0,40}", int in any::<i64>()) {
        assert_complete(map.ranges());
        for &h in &hashes {
            assert_lookup(&map, h);
        }
        assert_lookup(&map, routing_hash(ShardKey::Text(&text)));
        assert_lookup(&map, routing_hash(ShardKey::Bigint(int)));
        // The edges of every range.
        for r in map.ranges() {
            assert_lookup(&map, r.range.start);
            assert_lookup(&map, r.range.start.wrapping_sub(1));
            if let Some(e) = r.range.end {
                assert_lookup(&map, e - 1);
            }
        }
    }

    #[test]
    fn split_changes_only_that_range(map in arb_map(), which in any::<Index>(), offset in any::<u64>()) {
        let i = which.index(map.ranges().len());
        let old = map.ranges()[i].range;
        let len = old.len_u128();
        prop_assume!(len >= 2);
        let at = (u128::from(old.start) + 1 + u128::from(offset) % (len - 1)) as u64;
        let new = map.split(old, at, "new").unwrap();
        assert_complete(new.ranges());
        let (before, after) = (map.ranges(), new.ranges());
        prop_assert_eq!(after.len(), before.len() + 1);
        prop_assert_eq!(&after[..i], &before[..i]);
        prop_assert_eq!(&after[i + 2..], &before[i + 1..]);
        prop_assert_eq!(after[i].range, KeyRange { start: old.start, end: Some(at) });
        prop_assert_eq!(&after[i].shard, &before[i].shard);
        prop_assert_eq!(after[i + 1].range, KeyRange { start: at, end: old.end });
        prop_assert_eq!(after[i + 1].shard.as_str(), "new");
        // Merging back restores the map.
        let owner = before[i].shard.clone();
        prop_assert_eq!(new.merge(after[i].range, after[i + 1].range, &owner).unwrap(), map);
    }

    #[test]
    fn split_outside_is_refused(map in arb_map(), which in any::<Index>(), at in any::<u64>()) {
        let r = map.ranges()[which.index(map.ranges().len())].range;
        let inside = at > r.start && r.end.is_none_or(|e| at < e);
        prop_assert_eq!(map.split(r, at, "x").is_ok(), inside);
    }

    #[test]
    fn text_round_trips_byte_aligned(start in 0u64..=255, start_bytes in 1u32..=8,
                                     end in prop::option::of((1u64..=255, 1u32..=8))) {
        // A bound of `n` significant bytes: the value in the top n bytes.
        let aligned = |v: u64, n: u32| v << (8 * (8 - n));
        let start = if start == 0 { 0 } else { aligned(start, start_bytes) };
        let end = end.map(|(v, n)| aligned(v, n));
        let r = KeyRange { start, end };
        prop_assume!(!r.is_empty());
        let text = r.to_string();
        prop_assert_eq!(KeyRange::parse(&text).unwrap(), r, "{}", text);
        prop_assert!(text.len() <= 2 * 8 + 1 + 2 * 8);
    }

    #[test]
    fn text_round_trips_any(start in any::<u64>(), end in prop::option::of(any::<u64>())) {
        let r = KeyRange { start, end };
        prop_assume!(!r.is_empty());
        prop_assert_eq!(KeyRange::parse(&r.to_string()).unwrap(), r);
    }

    #[test]
    fn serde_round_trips(map in arb_map()) {
        let json = serde_json::to_string(&map).unwrap();
        prop_assert_eq!(serde_json::from_str::<ShardMap>(&json).unwrap(), map);
    }

    #[test]
    fn even_split_of_any_range(start in any::<u64>(), end in prop::option::of(any::<u64>()), n in 1usize..300) {
        let r = KeyRange { start, end };
        prop_assume!(!r.is_empty());
        let parts = r.split_even(n);
        prop_assert_eq!(parts.len() as u128, (n as u128).min(r.len_u128()));
        prop_assert_eq!(parts[0].start, r.start);
        prop_assert_eq!(parts[parts.len() - 1].end, r.end);
        for w in parts.windows(2) {
            prop_assert_eq!(w[0].end, Some(w[1].start));
        }
        let sizes: Vec<u128> = parts.iter().map(|p| p.len_u128()).collect();
        let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
        prop_assert!(*min >= 1 && max - min <= 1);
    }
}

#[test]
fn even_maps_are_complete_up_to_2000_shards() {
    let names: Vec<String> = (0..2000).map(|i| format!("s{i}")).collect();
    for n in 1..=2000 {
        let map = ShardMap::even(&names[..n]).unwrap();
        let ranges = map.ranges();
        assert_eq!(ranges.len(), n);
        assert_complete(ranges);
        let sizes = ranges.iter().map(|r| r.range.len_u128());
        let (min, max) = sizes.fold((u128::MAX, 0), |(lo, hi), s| (lo.min(s), hi.max(s)));
        assert!(max - min <= 1, "n={n}: sizes {min}..{max}");
        assert_eq!(
            ranges.iter().map(|r| r.range.len_u128()).sum::<u128>(),
            1 << 64
        );
        for (r, name) in ranges.iter().zip(&names) {
            assert_eq!(&r.shard, name);
        }
    }
}
