//! A keyspace's shard map.

use serde::{Deserialize, Serialize};

use crate::keyrange::KeyRange;

/// Errors building or changing a shard map.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardMapError {
    #[error("a shard map needs at least one range")]
    Empty,
    #[error("ranges must cover the whole key space without gaps or overlaps: {0}")]
    NotContiguous(String),
    #[error("no range {0}")]
    NoSuchRange(String),
    #[error("shard {0:?} is listed more than once")]
    DuplicateShard(String),
    #[error("ranges {0} and {1} are not adjacent")]
    NotAdjacent(String, String),
    #[error(transparent)]
    Range(#[from] crate::keyrange::KeyRangeError),
}

/// One range and its owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRange {
    pub range: KeyRange,
    pub shard: String,
}

/// The ranges of a keyspace, sorted, contiguous, covering `[0, 2^64)`.
/// Always valid: constructors and deserialisation check it.
///
/// A shard may own several ranges (after a range moved to it); each range
/// has exactly one owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<ShardRange>", into = "Vec<ShardRange>")]
pub struct ShardMap {
    ranges: Vec<ShardRange>,
    /// `ranges[i].range.start`, kept apart for a cache-friendly search.
    starts: Vec<u64>,
}

impl ShardMap {
    /// Checks and builds a map from ranges in any order.
    pub fn new(mut ranges: Vec<ShardRange>) -> Result<Self, ShardMapError> {
        if ranges.is_empty() {
            return Err(ShardMapError::Empty);
        }
        ranges.sort_by_key(|r| r.range);
        let gap = |msg: String| Err(ShardMapError::NotContiguous(msg));
        if let Some(bad) = ranges.iter().find(|r| r.range.is_empty()) {
            return gap(format!(
                "range {} of shard {:?} is empty",
                bad.range, bad.shard
            ));
        }
        let first = &ranges[0].range;
        if first.start != 0 {
            return gap(format!("the first range {first} does not start at 0"));
        }
        for pair in ranges.windows(2) {
            let (a, b) = (&pair[0].range, &pair[1].range);
            if a.end != Some(b.start) {
                let what = if a.end.is_none_or(|e| e > b.start) {
                    "overlap"
                } else {
                    "leave a gap"
                };
                return gap(format!("{a} and {b} {what}"));
            }
        }
        let last = &ranges[ranges.len() - 1].range;
        if last.end.is_some() {
            return gap(format!("the last range {last} does not reach the end"));
        }
        let starts = ranges.iter().map(|r| r.range.start).collect();
        Ok(ShardMap { ranges, starts })
    }

    /// A map splitting the space evenly over `shards`, in order.
    pub fn even(shards: &[String]) -> Result<Self, ShardMapError> {
        if shards.is_empty() {
            return Err(ShardMapError::Empty);
        }
        let mut seen = std::collections::HashSet::with_capacity(shards.len());
        if let Some(dup) = shards.iter().find(|s| !seen.insert(s.as_str())) {
            return Err(ShardMapError::DuplicateShard(dup.clone()));
        }
        let ranges = KeyRange::FULL
            .split_even(shards.len())
            .into_iter()
            .zip(shards)
            .map(|(range, shard)| ShardRange {
                range,
                shard: shard.clone(),
            })
            .collect();
        Self::new(ranges)
    }

    /// The range owning `hash`.
    #[inline]
    pub fn lookup(&self, hash: u64) -> &ShardRange {
        // starts[0] == 0, so at least one start is <= hash.
        let i = self.starts.partition_point(|&s| s <= hash);
        &self.ranges[i.saturating_sub(1)]
    }

    /// The ranges, sorted by start.
    pub fn ranges(&self) -> &[ShardRange] {
        &self.ranges
    }

    /// The distinct shards owning ranges, in range order.
    pub fn shards(&self) -> Vec<&str> {
        let mut seen = std::collections::HashSet::new();
        self.ranges
            .iter()
            .map(|r| r.shard.as_str())
            .filter(|s| seen.insert(*s))
            .collect()
    }

    /// The ranges `shard` owns.
    pub fn ranges_of<'a>(&'a self, shard: &'a str) -> impl Iterator<Item = KeyRange> + 'a {
        self.ranges
            .iter()
            .filter(move |r| r.shard == shard)
            .map(|r| r.range)
    }

    fn position(&self, range: KeyRange) -> Result<usize, ShardMapError> {
        self.ranges
            .binary_search_by_key(&range, |r| r.range)
            .map_err(|_| ShardMapError::NoSuchRange(range.to_string()))
    }

    /// A new map with `range` split at `at`, the upper half owned by
    /// `upper_shard` (the lower half keeps its owner).
    pub fn split(
        &self,
        range: KeyRange,
        at: u64,
        upper_shard: &str,
    ) -> Result<Self, ShardMapError> {
        let i = self.position(range)?;
        let (lower, upper) = range.split_at(at)?;
        let mut ranges = self.ranges.clone();
        ranges[i].range = lower;
        ranges.insert(
            i + 1,
            ShardRange {
                range: upper,
                shard: upper_shard.to_string(),
            },
        );
        Self::new(ranges)
    }

    /// A new map with the adjacent ranges `lower` and `upper` merged into
    /// one owned by `shard`.
    pub fn merge(
        &self,
        lower: KeyRange,
        upper: KeyRange,
        shard: &str,
    ) -> Result<Self, ShardMapError> {
        let i = self.position(lower)?;
        let j = self.position(upper)?;
        if j != i + 1 {
            return Err(ShardMapError::NotAdjacent(
                lower.to_string(),
                upper.to_string(),
            ));
        }
        let mut ranges = self.ranges.clone();
        ranges[i] = ShardRange {
            range: KeyRange {
                start: lower.start,
                end: upper.end,
            },
            shard: shard.to_string(),
        };
        ranges.remove(j);
        Self::new(ranges)
    }

    /// A new map with `range` owned by `shard` (a move).
    pub fn reassign(&self, range: KeyRange, shard: &str) -> Result<Self, ShardMapError> {
        let i = self.position(range)?;
        let mut ranges = self.ranges.clone();
        ranges[i].shard = shard.to_string();
        Self::new(ranges)
    }
}

impl TryFrom<Vec<ShardRange>> for ShardMap {
    type Error = ShardMapError;
    fn try_from(ranges: Vec<ShardRange>) -> Result<Self, Self::Error> {
        ShardMap::new(ranges)
    }
}

impl From<ShardMap> for Vec<ShardRange> {
    fn from(m: ShardMap) -> Self {
        m.ranges
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("s{i}")).collect()
    }

    fn sr(range: &str, shard: &str) -> ShardRange {
        ShardRange {
            range: KeyRange::parse(range).unwrap(),
            shard: shard.into(),
        }
    }

    #[test]
    fn even_and_lookup() {
        let m = ShardMap::even(&names(4)).unwrap();
        let text: Vec<String> = m
            .ranges()
            .iter()
            .map(|r| format!("{}={}", r.range, r.shard))
            .collect();
        assert_eq!(text, ["-40=s0", "40-80=s1", "80-c0=s2", "c0-=s3"]);
        assert_eq!(m.lookup(0).shard, "s0");
        assert_eq!(m.lookup(0x3fff_ffff_ffff_ffff).shard, "s0");
        assert_eq!(m.lookup(0x4000_0000_0000_0000).shard, "s1");
        assert_eq!(m.lookup(u64::MAX).shard, "s3");
        assert_eq!(m.shards(), ["s0", "s1", "s2", "s3"]);
    }

    #[test]
    fn even_refuses_bad_input() {
        assert_eq!(ShardMap::even(&[]), Err(ShardMapError::Empty));
        let dup = vec!["a".to_string(), "b".into(), "a".into()];
        assert_eq!(
            ShardMap::even(&dup),
            Err(ShardMapError::DuplicateShard("a".into()))
        );
    }

    #[test]
    fn new_validates() {
        assert!(ShardMap::new(vec![sr("80-", "b"), sr("-80", "a")]).is_ok());
        assert_eq!(ShardMap::new(vec![]), Err(ShardMapError::Empty));
        let cases = [
            (vec![sr("40-", "a")], "does not start at 0"),
            (vec![sr("-80", "a")], "does not reach the end"),
            (vec![sr("-40", "a"), sr("80-", "b")], "leave a gap"),
            (vec![sr("-80", "a"), sr("40-", "b")], "overlap"),
            (vec![sr("-", "a"), sr("-", "b")], "overlap"),
            (
                vec![sr("-80", "a"), sr("-80", "b"), sr("80-", "c")],
                "overlap",
            ),
        ];
        for (ranges, want) in cases {
            let err = ShardMap::new(ranges).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
    }

    #[test]
    fn split_merge_reassign() {
        let m = ShardMap::even(&names(2)).unwrap();
        let lower = KeyRange::parse("-80").unwrap();
        let m2 = m.split(lower, 0x40 << 56, "s2").unwrap();
        let text: Vec<String> = m2
            .ranges()
            .iter()
            .map(|r| format!("{}={}", r.range, r.shard))
            .collect();
        assert_eq!(text, ["-40=s0", "40-80=s2", "80-=s1"]);
        assert!(matches!(
            m.split(lower, 0x80 << 56, "x"),
            Err(ShardMapError::Range(_))
        ));
        assert!(matches!(
            m.split(KeyRange::parse("-40").unwrap(), 1, "x"),
            Err(ShardMapError::NoSuchRange(_))
        ));
        let a = KeyRange::parse("-40").unwrap();
        let b = KeyRange::parse("40-80").unwrap();
        let c = KeyRange::parse("80-").unwrap();
        assert_eq!(m2.merge(a, b, "s0").unwrap(), m);
        assert!(matches!(
            m2.merge(a, c, "s0"),
            Err(ShardMapError::NotAdjacent(..))
        ));
        let moved = m2.reassign(c, "s0").unwrap();
        assert_eq!(moved.ranges_of("s0").collect::<Vec<_>>(), [a, c]);
    }

    #[test]
    fn serde_round_trip_validates() {
        let m = ShardMap::even(&names(3)).unwrap();
        let json = serde_json::to_string(&m).unwrap();
        assert!(
            json.starts_with("[{\"range\":\"-5555555555555555\",\"shard\":\"s0\"}"),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<ShardMap>(&json).unwrap(), m);
        let gap = r#"[{"range":"-40","shard":"a"},{"range":"80-","shard":"b"}]"#;
        let err = serde_json::from_str::<ShardMap>(gap)
            .unwrap_err()
            .to_string();
        assert!(err.contains("gap"), "{err}");
        assert!(serde_json::from_str::<ShardMap>("[]").is_err());
    }
}
