//! SCRAM-SHA-256 (RFC 5802, RFC 7677) for app tokens: the verifiers the
//! manager stores and the server side of the exchange, so the router's
//! PostgreSQL wire front end can authenticate clients (user = app id,
//! password = the app's token) the way PostgreSQL does.
//!
//! A [`Verifier`] is PostgreSQL's stored secret,
//! `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`: enough
//! to check a client's proof and to prove the server knows the password,
//! but not the password itself.
//!
//! The exchange has two steps: [`server_first`] answers the client's
//! first message with the salt, the iteration count and the combined
//! nonce; [`Exchange::client_final`] checks the client's proof and
//! returns the server's final message. There is no channel binding: the
//! router offers only `SCRAM-SHA-256`, not `SCRAM-SHA-256-PLUS`, so a
//! client asking for it (`p=`) is refused. As in PostgreSQL, the user
//! name inside the SCRAM messages is ignored; the startup message's user
//! counts.
//!
//! # Several verifiers, one salt
//! During a token rotation's grace period an app has two valid tokens,
//! and the server must send its salt and iteration count before it knows
//! which of them the client holds. [`Exchange::client_final`] therefore
//! checks the proof against each of several verifiers, and this only
//! works if they all share the salt and the iteration count that were
//! sent: the manager gives a rotated token the *same* salt and iteration
//! count as the app's current verifier. Reusing a salt across tokens
//! costs nothing here: tokens are 256 random bits, so there is nothing
//! for a precomputed table to find.
//!
//! # Unknown users
//! For an unknown app the wire front end should still run the exchange
//! (a made-up salt, then [`Exchange::client_final`] with no verifiers,
//! which fails with [`ScramError::WrongProof`]), as PostgreSQL does, so
//! clients cannot tell unknown apps from wrong tokens.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::auth::constant_time_eq;

type HmacSha256 = Hmac<Sha256>;

/// The prefix of a stored verifier, and the mechanism's name.
pub const MECHANISM: &str = "SCRAM-SHA-256";

/// PostgreSQL's default iteration count (`scram_iterations`).
pub const DEFAULT_ITERATIONS: u32 = 4096;

/// PostgreSQL's salt length, in bytes.
pub const DEFAULT_SALT_LEN: usize = 16;

/// Why a SCRAM exchange or a stored verifier was refused. Messages carry
/// no secrets and no client input, so they may be shown to clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    /// A client message does not follow the SCRAM grammar.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// A client message uses a SCRAM feature PostgreSQL does not support
    /// either (authorization identity, mandatory extensions).
    #[error("unsupported SCRAM feature: {0}")]
    Unsupported(&'static str),
    /// The client asked for channel binding (`p=`).
    #[error(
        "SCRAM channel binding is not supported: the server offers SCRAM-SHA-256, \
         not SCRAM-SHA-256-PLUS"
    )]
    ChannelBindingUnsupported,
    /// The final message's channel binding (`c=`) is not the header the
    /// first message sent.
    #[error("SCRAM channel binding check failed")]
    ChannelBindingMismatch,
    /// The final message's nonce is not the one the server sent.
    #[error("SCRAM nonce does not match")]
    NonceMismatch,
    /// The proof matches no verifier: a wrong token.
    #[error("password authentication failed")]
    WrongProof,
    /// A stored verifier does not parse.
    #[error("malformed SCRAM-SHA-256 verifier: {0}")]
    BadVerifier(&'static str),
}

impl ScramError {
    /// The SQLSTATE PostgreSQL reports for this failure: 28P01
    /// (invalid_password) for a wrong token and for a server whose
    /// verifier is unusable (the client learns only that it cannot log
    /// in), 0A000 for unsupported features, 08P01 (protocol_violation)
    /// for the rest.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            ScramError::WrongProof | ScramError::BadVerifier(_) => "28P01",
            ScramError::Unsupported(_) => "0A000",
            ScramError::Malformed(_)
            | ScramError::ChannelBindingUnsupported
            | ScramError::ChannelBindingMismatch
            | ScramError::NonceMismatch => "08P01",
        }
    }
}

/// A SCRAM-SHA-256 verifier, as PostgreSQL stores it in `pg_authid`.
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    /// `H(HMAC(SaltedPassword, "Client Key"))`.
    pub stored_key: [u8; 32],
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: [u8; 32],
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The keys stay out of logs: with a sniffed exchange, StoredKey
        // is enough to log in.
        f.debug_struct("Verifier")
            .field("iterations", &self.iterations)
            .field("salt_len", &self.salt.len())
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// The verifier of `password` with this salt and iteration count (at
    /// least 1; 0 counts as 1). Costs `iterations` HMAC rounds: a few
    /// milliseconds at [`DEFAULT_ITERATIONS`].
    ///
    /// The password is used as is. SCRAM asks for SASLprep first, but
    /// app tokens are random printable ASCII, which SASLprep leaves
    /// unchanged, so the result is what PostgreSQL and its clients
    /// compute for them.
    pub fn new(password: &str, salt: &[u8], iterations: u32) -> Verifier {
        let iterations = iterations.max(1);
        let salted = hi(password.as_bytes(), salt, iterations);
        let client_key = hmac(&salted, b"Client Key");
        Verifier {
            iterations,
            salt: salt.to_vec(),
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac(&salted, b"Server Key"),
        }
    }

    /// Parses PostgreSQL's format,
    /// `SCRAM-SHA-256$<iterations>:<base64 salt>$<base64 StoredKey>:<base64 ServerKey>`.
    pub fn parse(s: &str) -> Result<Verifier, ScramError> {
        let bad = ScramError::BadVerifier;
        let rest = s
            .strip_prefix(MECHANISM)
            .and_then(|r| r.strip_prefix('$'))
            .ok_or(bad("does not start with SCRAM-SHA-256$"))?;
        let (iter_salt, keys) = rest.split_once('$').ok_or(bad("missing keys"))?;
        let (iterations, salt) = iter_salt.split_once(':').ok_or(bad("missing salt"))?;
        let iterations: u32 = iterations
            .parse()
            .ok()
            .filter(|&i| i > 0)
            .ok_or(bad("iteration count is not a positive integer"))?;
        let salt = STANDARD
            .decode(salt)
            .ok()
            .filter(|s| !s.is_empty())
            .ok_or(bad("salt is not non-empty base64"))?;
        let (stored, server) = keys.split_once(':').ok_or(bad("missing server key"))?;
        Ok(Verifier {
            iterations,
            salt,
            stored_key: decode_key(stored).ok_or(bad("stored key is not 32 bytes of base64"))?,
            server_key: decode_key(server).ok_or(bad("server key is not 32 bytes of base64"))?,
        })
    }

    /// Whether this verifier checks proofs made with `salt` and
    /// `iterations`.
    fn uses(&self, salt: &[u8], iterations: u32) -> bool {
        self.iterations == iterations && self.salt == salt
    }
}

impl fmt::Display for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{MECHANISM}${}:{}${}:{}",
            self.iterations,
            STANDARD.encode(&self.salt),
            STANDARD.encode(self.stored_key),
            STANDARD.encode(self.server_key),
        )
    }
}

impl std::str::FromStr for Verifier {
    type Err = ScramError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Verifier::parse(s)
    }
}

/// A SCRAM exchange after the server's first message: what the client's
/// final message is checked against. Used once.
#[derive(Debug)]
pub struct Exchange {
    /// `n,,` or `y,,`, which the final message's `c=` must repeat.
    gs2_header: &'static str,
    client_first_bare: String,
    server_first: String,
    /// The client's nonce followed by the server's.
    nonce: String,
    salt: Vec<u8>,
    iterations: u32,
}

/// Answers a client's first message (`n,,n=<user>,r=<nonce>`) with the
/// server's (`r=<client nonce><server nonce>,s=<base64 salt>,i=<iterations>`).
///
/// `salt` and `iterations` are those of the verifiers the final message
/// will be checked against. `server_nonce` must be fresh random
/// printable ASCII without commas (base64 of 18 random bytes, say); the
/// client refuses the exchange otherwise. The user name is ignored.
pub fn server_first(
    client_first: &[u8],
    salt: &[u8],
    iterations: u32,
    server_nonce: &str,
) -> Result<(Exchange, String), ScramError> {
    debug_assert!(
        !server_nonce.is_empty() && is_printable(server_nonce),
        "server nonce must be printable ASCII without commas"
    );
    let msg = std::str::from_utf8(client_first)
        .map_err(|_| ScramError::Malformed("client-first-message is not UTF-8"))?;
    let (gs2_header, rest) = if let Some(rest) = msg.strip_prefix("n,") {
        ("n,,", rest)
    } else if let Some(rest) = msg.strip_prefix("y,") {
        // The client could bind but thinks the server cannot: true here,
        // as no -PLUS mechanism is offered.
        ("y,,", rest)
    } else if msg.starts_with("p=") {
        return Err(ScramError::ChannelBindingUnsupported);
    } else {
        return Err(ScramError::Malformed("bad channel binding flag"));
    };
    let client_first_bare = if let Some(bare) = rest.strip_prefix(',') {
        bare
    } else if rest.starts_with("a=") {
        return Err(ScramError::Unsupported("authorization identity"));
    } else {
        return Err(ScramError::Malformed("bad GS2 header"));
    };
    if client_first_bare.ends_with(',') {
        return Err(ScramError::Malformed("trailing comma"));
    }
    let mut attrs = client_first_bare;
    if attrs.starts_with("m=") {
        return Err(ScramError::Unsupported("mandatory extensions"));
    }
    // The user name: PostgreSQL takes the startup message's.
    let _user = attr(&mut attrs, 'n')?;
    let client_nonce = attr(&mut attrs, 'r')?;
    if client_nonce.is_empty() || !is_printable(client_nonce) {
        return Err(ScramError::Malformed("client nonce is not printable"));
    }
    // Optional extensions after the nonce are ignored, as PostgreSQL
    // does, but must still be attributes.
    while !attrs.is_empty() {
        any_attr(&mut attrs)?;
    }
    let nonce = format!("{client_nonce}{server_nonce}");
    let server_first = format!("r={nonce},s={},i={iterations}", STANDARD.encode(salt));
    let exchange = Exchange {
        gs2_header,
        client_first_bare: client_first_bare.to_string(),
        server_first: server_first.clone(),
        nonce,
        salt: salt.to_vec(),
        iterations,
    };
    Ok((exchange, server_first))
}

impl Exchange {
    /// Checks the client's final message (`c=<binding>,r=<nonce>,p=<proof>`)
    /// against each verifier in turn; returns the index of the first that
    /// the proof matches and the server's final message
    /// (`v=<base64 ServerSignature>`). Verifiers with another salt or
    /// iteration count than [`server_first`] sent cannot match and are
    /// skipped.
    pub fn client_final(
        self,
        client_final: &[u8],
        verifiers: &[Verifier],
    ) -> Result<(usize, String), ScramError> {
        let msg = std::str::from_utf8(client_final)
            .map_err(|_| ScramError::Malformed("client-final-message is not UTF-8"))?;
        let mut attrs = msg;
        let binding = attr(&mut attrs, 'c')?;
        let binding = STANDARD
            .decode(binding)
            .map_err(|_| ScramError::Malformed("channel binding is not base64"))?;
        if binding != self.gs2_header.as_bytes() {
            return Err(ScramError::ChannelBindingMismatch);
        }
        if attr(&mut attrs, 'r')? != self.nonce {
            return Err(ScramError::NonceMismatch);
        }
        // Extensions may come before the proof, which must be last.
        let (without_proof, proof) = loop {
            let start = msg.len() - attrs.len();
            match any_attr(&mut attrs)? {
                ('p', proof) => {
                    // `start` is past the comma ending the previous
                    // attribute; the message without the proof leaves it
                    // out.
                    break (&msg[..start.saturating_sub(1)], proof);
                }
                _ if attrs.is_empty() => return Err(ScramError::Malformed("missing proof")),
                _ => {}
            }
        };
        if !attrs.is_empty() || msg.ends_with(',') {
            return Err(ScramError::Malformed("attributes after the proof"));
        }
        let proof = decode_key(proof).ok_or(ScramError::Malformed("proof is not 32 bytes"))?;
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let matched = verifiers.iter().position(|v| {
            if !v.uses(&self.salt, self.iterations) {
                return false;
            }
            let signature = hmac(&v.stored_key, auth_message.as_bytes());
            let mut client_key = proof;
            for (k, s) in client_key.iter_mut().zip(signature) {
                *k ^= s;
            }
            let stored: [u8; 32] = Sha256::digest(client_key).into();
            constant_time_eq(&stored, &v.stored_key)
        });
        let index = matched.ok_or(ScramError::WrongProof)?;
        let server_signature = hmac(&verifiers[index].server_key, auth_message.as_bytes());
        Ok((index, format!("v={}", STANDARD.encode(server_signature))))
    }
}

/// Reads `<name>=<value>` up to the next comma (consumed) or the end.
fn attr<'a>(s: &mut &'a str, name: char) -> Result<&'a str, ScramError> {
    match any_attr(s)? {
        (n, value) if n == name => Ok(value),
        _ => Err(ScramError::Malformed("unexpected attribute")),
    }
}

/// Reads any attribute: a letter, `=`, and a value up to the next comma
/// (consumed) or the end.
fn any_attr<'a>(s: &mut &'a str) -> Result<(char, &'a str), ScramError> {
    let mut chars = s.chars();
    let name = match (chars.next(), chars.next()) {
        (Some(n), Some('=')) if n.is_ascii_alphabetic() => n,
        (None, _) => return Err(ScramError::Malformed("message ends early")),
        _ => return Err(ScramError::Malformed("expected an attribute")),
    };
    // Both are ASCII: one byte each.
    let rest = &s[2..];
    let (value, after) = rest.split_once(',').unwrap_or((rest, ""));
    *s = after;
    Ok((name, value))
}

/// Printable ASCII other than the comma, as SCRAM nonces must be.
fn is_printable(s: &str) -> bool {
    s.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

fn decode_key(s: &str) -> Option<[u8; 32]> {
    STANDARD.decode(s).ok()?.try_into().ok()
}

fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = keyed(key);
    mac.update(message);
    mac.finalize().into_bytes().into()
}

fn keyed(key: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length (longer ones are hashed first).
    <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length")
}

/// `Hi()` of RFC 5802: PBKDF2-HMAC-SHA-256 with one 32-byte block.
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    // The keyed state is cloned per round rather than rebuilt: the key
    // schedule is the same every time.
    let base = keyed(password);
    let mut mac = base.clone();
    mac.update(salt);
    mac.update(&1u32.to_be_bytes());
    let mut u: [u8; 32] = mac.finalize().into_bytes().into();
    let mut out = u;
    for _ in 1..iterations {
        let mut mac = base.clone();
        mac.update(&u);
        u = mac.finalize().into_bytes().into();
        for (o, x) in out.iter_mut().zip(u) {
            *o ^= x;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
    use proptest::prelude::*;

    use super::*;

    const SALT: &[u8] = b"0123456789abcdef";

    /// Runs a whole exchange with the real client; returns the result and
    /// whether the client accepted the server's final message.
    fn login(
        password: &str,
        binding: ChannelBinding,
        verifiers: &[Verifier],
    ) -> (Result<usize, ScramError>, bool) {
        let v = &verifiers[0];
        let mut client = ScramSha256::new(password.as_bytes(), binding);
        let (exchange, first) =
            server_first(client.message(), &v.salt, v.iterations, "c2VydmVyLW5vbmNl").unwrap();
        client.update(first.as_bytes()).unwrap();
        match exchange.client_final(client.message(), verifiers) {
            Ok((i, last)) => (Ok(i), client.finish(last.as_bytes()).is_ok()),
            Err(e) => (Err(e), false),
        }
    }

    #[test]
    fn the_real_client_logs_in_with_the_right_password() {
        let v = Verifier::new("sl_token", SALT, 4096);
        for binding in [ChannelBinding::unsupported(), ChannelBinding::unrequested()] {
            let (r, server_proved) = login("sl_token", binding, std::slice::from_ref(&v));
            assert_eq!(r, Ok(0));
            assert!(server_proved, "the client accepts the server signature");
        }
    }

    #[test]
    fn rfc_7677_example() {
        let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let v = Verifier::new("pencil", &salt, 4096);
        let (ex, first) = server_first(
            b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
            &salt,
            4096,
            "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
        )
        .unwrap();
        assert_eq!(
            first,
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
             s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        let last = ex
            .client_final(
                b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                  p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
                &[v],
            )
            .unwrap();
        assert_eq!(
            last,
            (0, "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=".into())
        );
    }

    #[test]
    fn a_wrong_password_is_refused() {
        let v = Verifier::new("sl_token", SALT, 4096);
        let (r, _) = login("sl_other", ChannelBinding::unsupported(), &[v]);
        assert_eq!(r, Err(ScramError::WrongProof));
        assert_eq!(ScramError::WrongProof.sqlstate(), "28P01");
    }

    #[test]
    fn either_token_of_a_rotation_logs_in() {
        let pair = [
            Verifier::new("sl_new", SALT, 4096),
            Verifier::new("sl_old", SALT, 4096),
        ];
        assert_eq!(
            login("sl_old", ChannelBinding::unsupported(), &pair).0,
            Ok(1)
        );
        assert_eq!(
            login("sl_new", ChannelBinding::unsupported(), &pair).0,
            Ok(0)
        );
        // A verifier with another salt cannot match what was sent.
        let other_salt = [pair[0].clone(), Verifier::new("sl_old", b"other", 4096)];
        assert_eq!(
            login("sl_old", ChannelBinding::unsupported(), &other_salt).0,
            Err(ScramError::WrongProof)
        );
    }

    #[test]
    fn channel_binding_is_refused() {
        let client = ScramSha256::new(
            b"sl_token",
            ChannelBinding::tls_server_end_point(vec![1, 2, 3]),
        );
        let err = server_first(client.message(), SALT, 4096, "n").unwrap_err();
        assert_eq!(err, ScramError::ChannelBindingUnsupported);
        // And a final message claiming binding the first did not.
        let (ex, _) = server_first(b"n,,n=,r=abc", SALT, 4096, "def").unwrap();
        let cbind = STANDARD.encode("p=tls-server-end-point,,");
        let msg = format!("c={cbind},r=abcdef,p={}", STANDARD.encode([0u8; 32]));
        let v = Verifier::new("x", SALT, 4096);
        assert_eq!(
            ex.client_final(msg.as_bytes(), &[v]).unwrap_err(),
            ScramError::ChannelBindingMismatch
        );
    }

    #[test]
    fn verifiers_match_postgres_protocol() {
        let made = postgres_protocol::password::scram_sha_256(b"sl_abc123");
        let parsed = Verifier::parse(&made).unwrap();
        assert_eq!(parsed.iterations, DEFAULT_ITERATIONS);
        assert_eq!(parsed.salt.len(), DEFAULT_SALT_LEN);
        let ours = Verifier::new("sl_abc123", &parsed.salt, DEFAULT_ITERATIONS);
        assert_eq!(ours, parsed);
        assert_eq!(ours.to_string(), made);
        assert_eq!(made.parse::<Verifier>().unwrap(), ours);
        assert!(!format!("{ours:?}").contains(&STANDARD.encode(ours.stored_key)));
    }

    #[test]
    fn bad_verifiers_do_not_parse() {
        let good = Verifier::new("t", SALT, 10).to_string();
        assert!(Verifier::parse(&good).is_ok());
        for bad in [
            "",
            "md5abc",
            "SCRAM-SHA-256$",
            "SCRAM-SHA-256$4096:c2FsdA==",
            "SCRAM-SHA-256$0:c2FsdA==$AAAA:AAAA",
            "SCRAM-SHA-256$x:c2FsdA==$AAAA:AAAA",
            good.replace("$10:", "$10:!!").as_str(),
            &good[..good.len() - 4],
            good.replace(':', ";").as_str(),
        ] {
            assert!(
                matches!(Verifier::parse(bad), Err(ScramError::BadVerifier(_))),
                "{bad:?}"
            );
        }
    }

    /// The real client's first and final messages. Replaying the first
    /// gives a fresh [`Exchange`] the final belongs to (the server nonce
    /// is fixed).
    fn client_messages(password: &str) -> (Vec<u8>, String) {
        let mut client = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
        let first = client.message().to_vec();
        let (_, server) = server_first(&first, SALT, 4096, "srv").unwrap();
        client.update(server.as_bytes()).unwrap();
        (first, String::from_utf8(client.message().to_vec()).unwrap())
    }

    fn replay(first: &[u8]) -> Exchange {
        server_first(first, SALT, 4096, "srv").unwrap().0
    }

    #[test]
    fn malformed_messages_are_errors() {
        let malformed = |r: Result<(Exchange, String), ScramError>| {
            assert!(matches!(r, Err(ScramError::Malformed(_))), "{r:?}");
        };
        for first in [
            &b""[..],
            b"n",
            b"n,",
            b"n,,",
            b"n,,n=",
            b"n,,n=u",
            b"n,,n=u,r=",
            b"n,,n=u,r=a b",
            b"n,,n=u,r=abc,",
            b"n,,r=abc",
            b"x,,n=u,r=abc",
            b"\xff,,n=u,r=abc",
        ] {
            malformed(server_first(first, SALT, 4096, "srv"));
        }
        assert_eq!(
            server_first(b"n,a=admin,n=u,r=abc", SALT, 1, "s").unwrap_err(),
            ScramError::Unsupported("authorization identity")
        );
        assert!(matches!(
            server_first(b"n,,m=ext,n=u,r=abc", SALT, 1, "s"),
            Err(ScramError::Unsupported(_))
        ));
        // Extensions after the nonce are ignored.
        assert!(server_first(b"n,,n=u,r=abc,x=ext", SALT, 1, "s").is_ok());

        let v = Verifier::new("sl_token", SALT, 4096);
        let (first, good) = client_messages("sl_token");
        let proof_at = good.find(",p=").unwrap();
        let wrong_nonce = good.replacen(",r=", ",r=X", 1);
        let bad_b64 = format!("{},p=!!!!", &good[..proof_at]);
        for (bad, want) in [
            ("", None),
            ("c=biws", None),
            (&good[..proof_at], None),
            (&good[..good.len() - 5], None),
            (bad_b64.as_str(), None),
            (format!("{good},x=1").as_str(), None),
            (format!("{good},").as_str(), None),
            (good.replacen("c=biws", "c=!!", 1).as_str(), None),
            (wrong_nonce.as_str(), Some(ScramError::NonceMismatch)),
            (
                good.replacen("c=biws", "c=eSws", 1).as_str(),
                Some(ScramError::ChannelBindingMismatch),
            ),
        ] {
            let err = replay(&first)
                .client_final(bad.as_bytes(), std::slice::from_ref(&v))
                .unwrap_err();
            match want {
                Some(w) => assert_eq!(err, w, "{bad:?}"),
                None => assert!(matches!(err, ScramError::Malformed(_)), "{bad:?}: {err:?}"),
            }
        }
        // The unchanged message passes, and extensions before the proof
        // are allowed (they count in the signed message, so a client that
        // did not sign them fails the proof rather than the parse).
        let ok = replay(&first).client_final(good.as_bytes(), std::slice::from_ref(&v));
        assert_eq!(ok.map(|(i, _)| i), Ok(0));
        let with_ext = good.replacen(",p=", ",x=1,p=", 1);
        assert_eq!(
            replay(&first)
                .client_final(with_ext.as_bytes(), &[v])
                .unwrap_err(),
            ScramError::WrongProof
        );
        assert_eq!(
            replay(&first)
                .client_final(good.as_bytes(), &[])
                .unwrap_err(),
            ScramError::WrongProof
        );
    }

    /// Strings over the characters the grammar cares about, to reach past
    /// the first checks more often than random bytes do.
    fn scramish() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..96),
            "[nyp,=acrmxv biws/+A-Z0-9\u{e9}]{0,96}".prop_map(String::into_bytes),
            "(n|y|p=x),(a=u)?,n=[a-z]{0,3},r=[!-~]{0,8}(,[a-z]=[a-z]{0,3}){0,2}"
                .prop_map(String::into_bytes),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn random_input_never_panics(first in scramish(), last in scramish()) {
            let v = Verifier::new("t", SALT, 1);
            let _ = server_first(&first, SALT, 1, "srv");
            if let Ok((ex, _)) = server_first(b"n,,n=,r=abc", SALT, 1, "srv") {
                let _ = ex.client_final(&last, std::slice::from_ref(&v));
            }
            // A well-formed start with a random tail.
            let mut tail = b"c=biws,r=abcsrv,".to_vec();
            tail.extend_from_slice(&last);
            if let Ok((ex, _)) = server_first(b"n,,n=,r=abc", SALT, 1, "srv") {
                let _ = ex.client_final(&tail, std::slice::from_ref(&v));
            }
            let _ = Verifier::parse(&String::from_utf8_lossy(&first));
        }
    }
}
