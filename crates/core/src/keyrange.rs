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
    pub const FULL: KeyRange = KeyRange {
        start: 0,
        end: None,
    };

    /// A checked range: `start < end`.
    pub fn new(start: u64, end: Option<u64>) -> Result<Self, KeyRangeError> {
        let r = KeyRange { start, end };
        if r.is_empty() {
            return Err(KeyRangeError::Invalid(
                r.to_string(),
                "start must be below end",
            ));
        }
        Ok(r)
    }

    /// The end as a number, 2^64 for the open end.
    pub fn end_u128(&self) -> u128 {
        self.end.map_or(1 << 64, u128::from)
    }

    /// How many routing hashes the range holds (2^64 for the whole
    /// space; 0 for a malformed range with `start >= end`).
    pub fn len_u128(&self) -> u128 {
        self.end_u128().saturating_sub(u128::from(self.start))
    }

    /// Whether the range holds no hash (only possible for a range built
    /// field by field, never for a parsed or checked one).
    pub fn is_empty(&self) -> bool {
        self.len_u128() == 0
    }

    /// Whether `hash` is in the range.
    #[inline]
    pub fn contains(&self, hash: u64) -> bool {
        hash >= self.start && self.end.is_none_or(|e| hash < e)
    }

    /// Parses `-40`, `40-80`, `80-`, `-`.
    ///
    /// Each bound is an even number of hex digits (at most 16, either
    /// case), the big-endian bytes of the value with trailing zero bytes
    /// left out; an empty bound is 0 as a start and 2^64 as an end.
    pub fn parse(s: &str) -> Result<Self, KeyRangeError> {
        let invalid = |why| KeyRangeError::Invalid(s.to_string(), why);
        let (lo, hi) = s.split_once('-').ok_or_else(|| {
            invalid("expected START-END, e.g. \"40-80\", \"-40\", \"80-\" or \"-\"")
        })?;
        if hi.contains('-') {
            return Err(invalid("expected exactly one '-'"));
        }
        // The empty start is 0.
        let start = parse_bound(lo).map_err(invalid)?.unwrap_or(0);
        let end = parse_bound(hi).map_err(invalid)?;
        let r = KeyRange { start, end };
        if r.is_empty() {
            return Err(invalid("start must be below end"));
        }
        Ok(r)
    }

    /// Splits into `[start, at)` and `[at, end)`.
    pub fn split_at(&self, at: u64) -> Result<(KeyRange, KeyRange), KeyRangeError> {
        if at <= self.start || self.end.is_some_and(|e| at >= e) {
            return Err(KeyRangeError::SplitOutside(at));
        }
        Ok((
            KeyRange {
                start: self.start,
                end: Some(at),
            },
            KeyRange {
                start: at,
                end: self.end,
            },
        ))
    }

    /// Splits into `n >= 1` contiguous ranges of near-equal size.
    ///
    /// Boundaries sit at `start + i * len / n`. A range holding fewer than
    /// `n` hashes is split into one range per hash (so never an empty
    /// range); `n == 0` gives no ranges.
    pub fn split_even(&self, n: usize) -> Vec<KeyRange> {
        let len = self.len_u128();
        let n = (n as u128).min(len);
        let start = u128::from(self.start);
        let bound = |i: u128| -> u64 {
            // start + i*len/n <= end <= 2^64; only i == n can reach 2^64,
            // and that one is replaced by `self.end` below.
            (start + i * len / n) as u64
        };
        (0..n)
            .map(|i| KeyRange {
                start: bound(i),
                end: if i + 1 == n {
                    self.end
                } else {
                    Some(bound(i + 1))
                },
            })
            .collect()
    }
}

/// Parses one bound; `None` for the empty bound.
fn parse_bound(s: &str) -> Result<Option<u64>, &'static str> {
    if s.is_empty() {
        return Ok(None);
    }
    if s.len() > 16 {
        return Err("a bound has at most 16 hex digits (8 bytes)");
    }
    if !s.len().is_multiple_of(2) {
        return Err("a bound needs an even number of hex digits (whole bytes)");
    }
    if !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("bounds must be hex digits");
    }
    let v = u64::from_str_radix(s, 16).map_err(|_| "bounds must be hex digits")?;
    // Digits are the leading bytes: pad on the right.
    Ok(Some(v << (4 * (16 - s.len()) as u32)))
}

/// Formats one bound: the big-endian bytes in hex, trailing zero bytes
/// trimmed. Zero has no digits left; `Display` writes nothing for a zero
/// start and `00` for the (malformed) end zero so it cannot read as open.
fn format_bound(v: u64) -> String {
    let full = format!("{v:016x}");
    let mut s = full.as_str();
    while let Some(rest) = s.strip_suffix("00") {
        s = rest;
    }
    s.to_string()
}

impl std::fmt::Display for KeyRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&format_bound(self.start))?;
        f.write_str("-")?;
        match self.end {
            None => Ok(()),
            Some(0) => f.write_str("00"),
            Some(e) => f.write_str(&format_bound(e)),
        }
    }
}

impl std::str::FromStr for KeyRange {
    type Err = KeyRangeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KeyRange::parse(s)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, end: Option<u64>) -> KeyRange {
        KeyRange { start, end }
    }

    #[test]
    fn formats_vitess_style() {
        assert_eq!(KeyRange::FULL.to_string(), "-");
        assert_eq!(r(0, Some(0x4000000000000000)).to_string(), "-40");
        assert_eq!(
            r(0x4000000000000000, Some(0x8000000000000000)).to_string(),
            "40-80"
        );
        assert_eq!(r(0x8000000000000000, None).to_string(), "80-");
        assert_eq!(r(0x4080000000000000, None).to_string(), "4080-");
        assert_eq!(r(0x0100000000000000, None).to_string(), "01-");
        assert_eq!(r(1, None).to_string(), "0000000000000001-");
        assert_eq!(r(0, Some(u64::MAX)).to_string(), "-ffffffffffffffff");
    }

    #[test]
    fn parses() {
        assert_eq!(KeyRange::parse("-").unwrap(), KeyRange::FULL);
        assert_eq!(
            KeyRange::parse("-40").unwrap(),
            r(0, Some(0x4000000000000000))
        );
        assert_eq!(
            KeyRange::parse("40-80").unwrap(),
            r(0x4000000000000000, Some(0x8000000000000000))
        );
        assert_eq!(KeyRange::parse("80-").unwrap(), r(0x8000000000000000, None));
        assert_eq!(
            KeyRange::parse("4080-C0").unwrap(),
            r(0x4080000000000000, Some(0xc000000000000000))
        );
        assert_eq!(
            KeyRange::parse("00-01").unwrap(),
            r(0, Some(0x0100000000000000))
        );
        assert_eq!(KeyRange::parse("0000000000000001-").unwrap(), r(1, None));
    }

    #[test]
    fn rejects_bad_text() {
        for (s, why) in [
            ("", "expected START-END"),
            ("40", "expected START-END"),
            ("4-80", "even number"),
            ("40-8", "even number"),
            ("000000000000000001-", "at most 16"),
            ("4g-", "hex digits"),
            ("+4-", "hex digits"),
            ("80-40", "below end"),
            ("40-40", "below end"),
            ("40-80-c0", "exactly one"),
            ("-00", "below end"),
        ] {
            let err = KeyRange::parse(s).unwrap_err().to_string();
            assert!(err.contains(why), "{s:?}: {err}");
        }
    }

    #[test]
    fn contains_is_half_open() {
        let x = r(0x40 << 56, Some(0x80 << 56));
        assert!(!x.contains((0x40 << 56) - 1));
        assert!(x.contains(0x40 << 56));
        assert!(x.contains((0x80 << 56) - 1));
        assert!(!x.contains(0x80 << 56));
        assert!(r(5, None).contains(u64::MAX));
    }

    #[test]
    fn splits() {
        let (a, b) = KeyRange::FULL.split_at(1 << 63).unwrap();
        assert_eq!((a.to_string(), b.to_string()), ("-80".into(), "80-".into()));
        assert_eq!(a.split_at(0), Err(KeyRangeError::SplitOutside(0)));
        assert_eq!(
            a.split_at(1 << 63),
            Err(KeyRangeError::SplitOutside(1 << 63))
        );
        assert!(b.split_at(u64::MAX).is_ok());

        let four: Vec<String> = KeyRange::FULL
            .split_even(4)
            .iter()
            .map(|r| r.to_string())
            .collect();
        assert_eq!(four, ["-40", "40-80", "80-c0", "c0-"]);
        assert_eq!(KeyRange::FULL.split_even(1), vec![KeyRange::FULL]);
        assert!(KeyRange::FULL.split_even(0).is_empty());
        // Fewer hashes than parts: one range per hash.
        assert_eq!(
            r(10, Some(13)).split_even(5),
            vec![r(10, Some(11)), r(11, Some(12)), r(12, Some(13))]
        );
    }

    #[test]
    fn serde_as_string() {
        let x = r(0x40 << 56, Some(0x80 << 56));
        assert_eq!(serde_json::to_string(&x).unwrap(), "\"40-80\"");
        assert_eq!(serde_json::from_str::<KeyRange>("\"40-80\"").unwrap(), x);
        assert!(serde_json::from_str::<KeyRange>("\"80-40\"").is_err());
    }
}
