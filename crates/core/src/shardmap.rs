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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<ShardRange>", into = "Vec<ShardRange>")]
pub struct ShardMap {
    ranges: Vec<ShardRange>,
    /// `ranges[i].range.start`, kept apart for a cache-friendly search.
    starts: Vec<u64>,
}

impl ShardMap {
    /// Checks and builds a map from ranges in any order.
    pub fn new(ranges: Vec<ShardRange>) -> Result<Self, ShardMapError> {
        let _ = ranges;
        todo!()
    }

    /// A map splitting the space evenly over `shards`, in order.
    pub fn even(shards: &[String]) -> Result<Self, ShardMapError> {
        let _ = shards;
        todo!()
    }

    /// The range owning `hash`.
    pub fn lookup(&self, hash: u64) -> &ShardRange {
        let _ = hash;
        todo!()
    }

    /// The ranges, sorted by start.
    pub fn ranges(&self) -> &[ShardRange] {
        &self.ranges
    }

    /// A new map with `range` split at `at`, the upper half owned by
    /// `upper_shard` (the lower half keeps its owner).
    pub fn split(&self, range: KeyRange, at: u64, upper_shard: &str) -> Result<Self, ShardMapError> {
        let _ = (range, at, upper_shard);
        todo!()
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
