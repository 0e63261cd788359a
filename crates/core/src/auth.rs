//! Token hashing. Tokens are high-entropy random strings, so one SHA-256
//! is enough to store them safely; routers look an app up by the hash of
//! the presented token, so no stored secret is ever compared byte by byte.

use sha2::{Digest, Sha256};

/// The hex SHA-256 of a token.
pub fn token_hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Compares two byte strings in time independent of where they differ
/// (only their lengths, which are public here: hashes, MACs and keys of
/// fixed size, may end it early). Every token, SCRAM key and fencing MAC
/// check goes through here, on `subtle`, whose comparison the optimiser
/// cannot turn back into an early exit.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_and_compares() {
        assert_eq!(
            token_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(constant_time_eq(b"", b""));
        // Every position is compared, not just the first bytes.
        let a = [7u8; 64];
        for i in 0..a.len() {
            let mut b = a;
            b[i] ^= 1;
            assert!(!constant_time_eq(&a, &b), "byte {i}");
        }
    }
}
