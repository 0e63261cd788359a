//! Ranges of the 64-bit routing space.

use serde::{Deserialize, Serialize};

/// Errors parsing or splitting ranges.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyRangeError {
    #[error("invalid key range {0:?}: {1}")]
    Invalid(String, &'static str),
    #[error("split point {0:016x} is not strictly inside the range")]
    SplitOutside(u64),
}

/// A range `[start, end)` of routing hashes; `end == None` is the open end
/// (2^64). Written Vitess-style: bounds as hex with trailing zero bytes
/// trimmed, empty for the open ends: `-40`, `40-80`, `80-`, `-` (all).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct KeyRange {
    pub start: u64,
    pub end: Option<u64>,
}

impl KeyRange {
    /// The whole space, `-`.
    pub const FULL: KeyRange = KeyRange { start: 0, end: None };

    /// Whether `hash` is in the range.
    pub fn contains(&self, hash: u64) -> bool {
        let _ = hash;
        todo!()
    }

    /// Parses `-40`, `40-80`, `80-`, `-`.
    pub fn parse(s: &str) -> Result<Self, KeyRangeError> {
        let _ = s;
        todo!()
    }

    /// Splits into `[start, at)` and `[at, end)`.
    pub fn split_at(&self, at: u64) -> Result<(KeyRange, KeyRange), KeyRangeError> {
        let _ = at;
        todo!()
    }

    /// Splits into `n >= 1` contiguous ranges of near-equal size.
    pub fn split_even(&self, n: usize) -> Vec<KeyRange> {
        let _ = n;
        todo!()
    }
}

impl std::fmt::Display for KeyRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let _ = f;
        todo!()
    }
}

impl TryFrom<String> for KeyRange {
    type Error = KeyRangeError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        KeyRange::parse(&s)
    }
}

impl From<KeyRange> for String {
    fn from(r: KeyRange) -> String {
        r.to_string()
    }
}
