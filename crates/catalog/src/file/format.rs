//! The on-disk format of the file store.
//!
//! One file, rewritten whole on every commit:
//!
//! ```text
//! shardline-catalog v1 sha256=<64 lowercase hex digits: SHA-256 of the body>
//! {"revision":7,"entries":2}
//! {"key":"keyspaces/main","rev":3,"text":"{\"shards\":4}"}
//! {"key":"raw","rev":7,"base64":"/w=="}
//! ```
//!
//! The body (every line after the first) is a header line, then one JSON
//! line per entry, sorted by key; every line ends with a newline. A value
//! is stored as `text` when it is valid UTF-8 (catalog values are JSON, so
//! the file stays readable and greppable by an operator) and as `base64`
//! otherwise. The checksum turns a truncated, torn or hand-edited file into
//! a clear error instead of a silently different catalog; the strict parse
//! after it rejects anything this module would not write.
//!
//! Each entry keeps its encoded line in memory ([`Stored::line`]), so a
//! commit encodes only what it changed and copies the rest.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::Revision;

/// The first bytes of every file, up to the checksum.
const MAGIC: &[u8] = b"shardline-catalog v1 sha256=";

/// A stored value, the revision that last wrote it, and its file line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Stored {
    pub value: Vec<u8>,
    pub mod_revision: Revision,
    /// The entry's line in the file, without the newline.
    line: Box<[u8]>,
}

impl Stored {
    pub fn new(
        key: &str,
        value: Vec<u8>,
        mod_revision: Revision,
    ) -> Result<Stored, serde_json::Error> {
        let line =
            serde_json::to_vec(&EntryOut::new(key, &value, mod_revision))?.into_boxed_slice();
        Ok(Stored {
            value,
            mod_revision,
            line,
        })
    }
}

/// The whole store as read from a file.
#[derive(Debug)]
pub(super) struct Decoded {
    pub revision: Revision,
    pub entries: BTreeMap<String, Stored>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    revision: Revision,
    entries: usize,
}

#[derive(Serialize)]
struct EntryOut<'a> {
    key: &'a str,
    rev: Revision,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    base64: Option<String>,
}

impl<'a> EntryOut<'a> {
    fn new(key: &'a str, value: &'a [u8], rev: Revision) -> Self {
        match std::str::from_utf8(value) {
            Ok(text) => EntryOut {
                key,
                rev,
                text: Some(text),
                base64: None,
            },
            Err(_) => EntryOut {
                key,
                rev,
                text: None,
                base64: Some(base64::engine::general_purpose::STANDARD.encode(value)),
            },
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryIn {
    key: String,
    rev: Revision,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    base64: Option<String>,
}

/// Encodes the store at `revision`: `entries` with `changes` applied on
/// top (`Some` puts, `None` deletes). Taking the changes apart lets a
/// commit write the new state without first changing (or copying) the
/// in-memory one, which must stay as it is if the write fails.
pub(super) fn encode(
    revision: Revision,
    entries: &BTreeMap<String, Stored>,
    changes: &BTreeMap<String, Option<Stored>>,
) -> Result<Vec<u8>, serde_json::Error> {
    let mut lines: Vec<&[u8]> = Vec::with_capacity(entries.len() + changes.len());
    let mut old = entries.iter().peekable();
    let mut new = changes.iter().peekable();
    // Merges two sorted sequences; on equal keys the change wins.
    loop {
        let take_old = match (old.peek(), new.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some((ko, _)), Some((kn, _))) => match ko.as_str().cmp(kn.as_str()) {
                Ordering::Less => true,
                Ordering::Equal => {
                    old.next();
                    false
                }
                Ordering::Greater => false,
            },
        };
        if take_old {
            if let Some((_, stored)) = old.next() {
                lines.push(&stored.line);
            }
        } else if let Some((_, Some(stored))) = new.next() {
            lines.push(&stored.line);
        }
    }
    let header = serde_json::to_vec(&Header {
        revision,
        entries: lines.len(),
    })?;
    let start = MAGIC.len() + 65;
    let size = start + header.len() + 1 + lines.iter().map(|l| l.len() + 1).sum::<usize>();
    // One buffer: the checksum's place is filled once the body is in.
    let mut file = Vec::with_capacity(size);
    file.extend_from_slice(MAGIC);
    file.extend_from_slice(&[b'0'; 64]);
    file.push(b'\n');
    file.extend_from_slice(&header);
    file.push(b'\n');
    for line in lines {
        file.extend_from_slice(line);
        file.push(b'\n');
    }
    let sum = hex(&Sha256::digest(&file[start..]));
    file[MAGIC.len()..start - 1].copy_from_slice(sum.as_bytes());
    Ok(file)
}

/// Decodes a file; the error says what is wrong with it.
pub(super) fn decode(bytes: &[u8]) -> Result<Decoded, String> {
    if bytes.is_empty() {
        return Err("the file is empty".into());
    }
    let rest = bytes
        .strip_prefix(MAGIC)
        .ok_or("not a shardline catalog file (bad header)")?;
    let newline = rest
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("truncated header")?;
    let (sum, body) = rest.split_at(newline);
    let body = &body[1..];
    if sum.len() != 64 || !sum.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err("bad checksum in header".into());
    }
    if hex(&Sha256::digest(body)).as_bytes() != sum {
        return Err("checksum mismatch: the file is truncated or damaged".into());
    }
    let mut lines = body
        .strip_suffix(b"\n")
        .ok_or("no final newline")?
        .split(|&b| b == b'\n');
    let header: Header = serde_json::from_slice(lines.next().unwrap_or_default())
        .map_err(|e| format!("bad header line: {e}"))?;
    let mut entries = BTreeMap::new();
    for (n, line) in lines.enumerate() {
        let entry: EntryIn =
            serde_json::from_slice(line).map_err(|e| format!("bad entry line {}: {e}", n + 1))?;
        if entry.rev == 0 || entry.rev > header.revision {
            return Err(format!(
                "entry {:?} has revision {} outside 1..={}",
                entry.key, entry.rev, header.revision
            ));
        }
        let value = match (entry.text, entry.base64) {
            (Some(text), None) => text.into_bytes(),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| format!("entry {:?}: bad base64: {e}", entry.key))?,
            _ => {
                return Err(format!(
                    "entry {:?} needs exactly one of text and base64",
                    entry.key
                ))
            }
        };
        if let Some((last, _)) = entries.last_key_value() {
            if *last >= entry.key {
                return Err(format!("entry {:?} is out of order or repeated", entry.key));
            }
        }
        let stored = Stored {
            value,
            mod_revision: entry.rev,
            line: line.into(),
        };
        entries.insert(entry.key, stored);
    }
    if entries.len() != header.entries {
        return Err(format!(
            "header says {} entries, found {}",
            header.entries,
            entries.len()
        ));
    }
    Ok(Decoded {
        revision: header.revision,
        entries,
    })
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> BTreeMap<String, Stored> {
        let mut entries = BTreeMap::new();
        let a = Stored::new("a", b"{\"x\":1}\n".to_vec(), 1).unwrap();
        let c = Stored::new("c", vec![0xff, 0x00, 0x80], 2).unwrap();
        entries.insert("a".to_string(), a);
        entries.insert("c".to_string(), c);
        entries
    }

    #[test]
    fn round_trip_with_changes() {
        let mut changes = BTreeMap::new();
        changes.insert(
            "b".to_string(),
            Some(Stored::new("b", b"new".to_vec(), 3).unwrap()),
        );
        changes.insert("c".to_string(), None);
        changes.insert(
            "d".to_string(),
            Some(Stored::new("d", vec![0xfe], 3).unwrap()),
        );
        let bytes = encode(3, &sample(), &changes).unwrap();
        let decoded = decode(&bytes).unwrap();
        assert_eq!(decoded.revision, 3);
        let keys: Vec<_> = decoded.entries.keys().cloned().collect();
        assert_eq!(keys, ["a", "b", "d"]);
        // Equality covers the cached line: decoding rebuilds what encoding made.
        assert_eq!(decoded.entries["a"], sample()["a"]);
        assert_eq!(decoded.entries["b"], changes["b"].clone().unwrap());
        assert_eq!(decoded.entries["d"].value, vec![0xfe]);
    }

    #[test]
    fn binary_values_survive() {
        let bytes = encode(2, &sample(), &BTreeMap::new()).unwrap();
        let decoded = decode(&bytes).unwrap();
        assert_eq!(decoded.entries, sample());
    }

    #[test]
    fn one_line_per_entry() {
        let bytes = encode(2, &sample(), &BTreeMap::new()).unwrap();
        let text = String::from_utf8(bytes).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].starts_with("shardline-catalog v1 sha256="));
        assert_eq!(lines[1], r#"{"revision":2,"entries":2}"#);
        assert_eq!(lines[2], r#"{"key":"a","rev":1,"text":"{\"x\":1}\n"}"#);
        assert_eq!(lines[3], r#"{"key":"c","rev":2,"base64":"/wCA"}"#);
    }

    #[test]
    fn every_truncation_is_rejected() {
        let bytes = encode(2, &sample(), &BTreeMap::new()).unwrap();
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len]).is_err(), "prefix of {len} bytes");
        }
    }

    #[test]
    fn a_flipped_bit_is_rejected() {
        let bytes = encode(2, &sample(), &BTreeMap::new()).unwrap();
        for i in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x01;
            assert!(decode(&damaged).is_err(), "bit flipped at byte {i}");
        }
    }

    fn with_body(lines: &[&str]) -> Vec<u8> {
        let mut body = String::new();
        for line in lines {
            body.push_str(line);
            body.push('\n');
        }
        let mut file = MAGIC.to_vec();
        file.extend_from_slice(hex(&Sha256::digest(body.as_bytes())).as_bytes());
        file.push(b'\n');
        file.extend_from_slice(body.as_bytes());
        file
    }

    #[test]
    fn inconsistent_bodies_are_rejected() {
        let empty = decode(&with_body(&[r#"{"revision":0,"entries":0}"#])).unwrap();
        assert_eq!((empty.revision, empty.entries.len()), (0, 0));
        let head = r#"{"revision":1,"entries":1}"#;
        let two = r#"{"revision":1,"entries":2}"#;
        for (lines, why) in [
            (vec![head, r#"{"key":"a","rev":2,"text":""}"#], "revision"),
            (vec![head, r#"{"key":"a","rev":0,"text":""}"#], "revision"),
            (vec![head, r#"{"key":"a","rev":1}"#], "exactly one"),
            (
                vec![head, r#"{"key":"a","rev":1,"text":"","base64":""}"#],
                "exactly one",
            ),
            (vec![head, r#"{"key":"a","rev":1,"base64":"!"}"#], "base64"),
            (
                vec![
                    two,
                    r#"{"key":"b","rev":1,"text":""}"#,
                    r#"{"key":"a","rev":1,"text":""}"#,
                ],
                "out of order",
            ),
            (
                vec![
                    two,
                    r#"{"key":"a","rev":1,"text":""}"#,
                    r#"{"key":"a","rev":1,"text":""}"#,
                ],
                "out of order",
            ),
            (vec![head], "header says 1 entries, found 0"),
            (
                vec![head, r#"{"key":"a","rev":1,"text":""}"#, ""],
                "bad entry line 2",
            ),
            (
                vec![r#"{"revision":1,"entries":0,"extra":1}"#],
                "bad header line",
            ),
            (vec![r#"{"revision":-1,"entries":0}"#], "bad header line"),
            (
                vec![head, r#"{"key":"a","rev":1,"text":"","x":1}"#],
                "bad entry line 1",
            ),
        ] {
            let err = decode(&with_body(&lines)).unwrap_err();
            assert!(err.contains(why), "{lines:?}: {err}");
        }
    }
}
