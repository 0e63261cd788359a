//! Version claims: how a router session tells a fenced shard which
//! catalog version it routed by, in a form the tenant's own SQL cannot
//! forge.
//!
//! A router runs a tenant's statements as the tenant's role, in one
//! PostgreSQL session with them, so a plain setting such as
//! `shardline.map_version = 42` could be changed by the tenant's SQL
//! (`set_config`, a `DO` block) in the middle of a request, and a
//! resharding fence that trusted it could be dodged. The router therefore
//! sets a *claim*: the version, and a keyed hash of that version and the
//! session's backend pid. The key is derived from the tenant role's
//! password, which routers and the manager hold and the tenant never
//! sees; the manager stores it in the tenant database in a table only
//! superusers can read, and the fence trigger (SECURITY DEFINER)
//! recomputes the hash. A tenant can read its session's claim but cannot
//! make one for another version, nor reuse one in another session (the
//! pid differs).
//!
//! The hash is `sha256(key ":" pid ":" version ":" key)` in lowercase
//! hex, the key on both sides of the message (an envelope construction,
//! so SHA-256's length extension gives nothing), and the version must
//! be 1 to 18 decimal digits on both sides, so no other message parses.
//! PostgreSQL computes the same with `sha256(convert_to(..., 'UTF8'))`.

use sha2::{Digest, Sha256};

use crate::auth::hex;

/// The setting a router session's claim lives in.
pub const CLAIM_SETTING: &str = "shardline.map_version";

/// The claim key of a tenant whose PostgreSQL role has `role_password`:
/// 64 hex characters.
pub fn claim_key(role_password: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"shardline fence claim key\0");
    h.update(role_password.as_bytes());
    hex(&h.finalize())
}

/// The claim a session with backend `pid` makes for catalog `version`:
/// `"<version>:<64 hex>"`.
pub fn claim(key: &str, pid: i32, version: u64) -> String {
    format!("{version}:{}", claim_mac(key, pid, version))
}

fn claim_mac(key: &str, pid: i32, version: u64) -> String {
    hex(&Sha256::digest(
        format!("{key}:{pid}:{version}:{key}").as_bytes(),
    ))
}

/// The version a claim made with `key` by backend `pid` proves, if it is
/// genuine. The fence trigger checks claims in SQL; this is the same
/// check, for tests and tools.
pub fn verify_claim(key: &str, pid: i32, claim: &str) -> Option<u64> {
    let (version, mac) = claim.split_once(':')?;
    if version.is_empty() || version.len() > 18 || !version.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let version: u64 = version.parse().ok()?;
    let expected = claim_mac(key, pid, version);
    crate::auth::constant_time_eq(expected.as_bytes(), mac.as_bytes()).then_some(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_verify_only_for_their_key_pid_and_version() {
        let key = claim_key("pw");
        assert_eq!(key.len(), 64);
        let c = claim(&key, 4242, 17);
        assert!(c.starts_with("17:"));
        assert_eq!(verify_claim(&key, 4242, &c), Some(17));
        // Another session, another key, another version: refused.
        assert_eq!(verify_claim(&key, 4243, &c), None);
        assert_eq!(verify_claim(&claim_key("other"), 4242, &c), None);
        let forged = c.replacen("17:", "18:", 1);
        assert_eq!(verify_claim(&key, 4242, &forged), None);
        for bad in ["", "17", ":abc", "x:abc", "1234567890123456789:00"] {
            assert_eq!(verify_claim(&key, 4242, bad), None, "{bad}");
        }
    }

    #[test]
    fn the_mac_is_the_documented_envelope_hash() {
        // What the SQL side computes:
        // encode(sha256(convert_to(k || ':' || pid || ':' || v || ':' || k, 'UTF8')), 'hex')
        let key = "k";
        let expected = hex(&Sha256::digest(b"k:7:9:k"));
        assert_eq!(claim(key, 7, 9), format!("9:{expected}"));
    }
}
