//! Mutated requests and the oracle that judges their answers.
//!
//! Each run draws a fresh seed (or takes `SHARDLINE_FUZZ_SEED`) and
//! prints it, so a failure can be replayed exactly. Mutations are both
//! blind (bytes flipped, dropped or inserted) and aware of the JSON (a
//! value swapped for a hostile one: NUL characters, huge or odd numbers,
//! deep nesting, 65,536 parameters, long strings), so that bodies get
//! past the JSON parser to the checks and to PostgreSQL.
//!
//! The oracle: every answer is a status (never none), never 500, and
//! every error is the JSON error body. An answer that says "not your
//! fault" — a 5xx, or `"retryable": true` — is sent again once (after its
//! `Retry-After`, at most 2 s); answered the same way again, it is a
//! failure that will recur, called the server's fault or worth retrying,
//! and the run fails naming the seed and the body.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::common::{raw, Raw};

/// The environment variable that replays a run.
pub const SEED_VAR: &str = "SHARDLINE_FUZZ_SEED";

/// One request to mutate: method, path, JSON body.
pub type Seed = (&'static str, &'static str, &'static str);

pub struct Fuzzer {
    pub seed: u64,
    rng: StdRng,
}

/// What a run saw.
#[derive(Default, Debug)]
pub struct Tally {
    pub sent: usize,
    /// Answers by status and error code.
    pub answers: BTreeMap<String, usize>,
    /// Transient answers that were different when sent again.
    pub replayed: usize,
}

impl Fuzzer {
    /// A fuzzer seeded from `SHARDLINE_FUZZ_SEED`, else at random; the
    /// seed is printed either way.
    pub fn from_env() -> Fuzzer {
        let seed = match std::env::var(SEED_VAR) {
            Ok(v) => v
                .parse()
                .unwrap_or_else(|_| panic!("{SEED_VAR} must be a u64, not {v:?}")),
            Err(_) => rand::random(),
        };
        println!("fuzz seed {seed} (replay with {SEED_VAR}={seed})");
        Fuzzer {
            seed,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Sends `rounds` mutated copies of the seeds to `base` and judges
    /// each answer (see the module docs).
    pub async fn run(&mut self, base: &str, token: &str, seeds: &[Seed], rounds: usize) -> Tally {
        let mut tally = Tally::default();
        for round in 0..rounds {
            let (method, path, body) = seeds[round % seeds.len()];
            let body = self.mutate(body);
            let r = raw(base, method, path, Some(token), &body, &[]).await;
            self.judge(method, path, &body, &r);
            tally.sent += 1;
            let answer = match r.body["error"]["code"].as_str() {
                Some(code) => format!("{} {code}", r.status),
                None => r.status.to_string(),
            };
            *tally.answers.entry(answer).or_default() += 1;
            if r.status >= 500 || r.body["error"]["retryable"] == true {
                let wait = r
                    .retry_after
                    .as_deref()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0u64)
                    .min(2);
                tokio::time::sleep(Duration::from_secs(wait)).await;
                let again = raw(base, method, path, Some(token), &body, &[]).await;
                self.judge(method, path, &body, &again);
                assert!(
                    again.status != r.status
                        || again.body["error"]["code"] != r.body["error"]["code"],
                    "seed {}: {method} {path} answered {} {} twice — a failure that recurs, \
                     answered as the server's or as retryable; body {:?}: {}",
                    self.seed,
                    r.status,
                    r.body["error"]["code"],
                    String::from_utf8_lossy(&body),
                    again.text
                );
                tally.replayed += 1;
            }
        }
        tally
    }

    /// Checks one answer: a status, not 500, errors as the JSON body.
    fn judge(&self, method: &str, path: &str, body: &[u8], r: &Raw) {
        let seed = self.seed;
        let shown = || {
            String::from_utf8_lossy(body)
                .chars()
                .take(2000)
                .collect::<String>()
        };
        assert!(
            r.status != 0,
            "seed {seed}: no answer to {method} {path} {:?}",
            shown()
        );
        assert!(
            r.status != 500,
            "seed {seed}: 500 for {method} {path} {:?}: {}",
            shown(),
            r.text
        );
        if r.status >= 400 {
            let e = &r.body["error"];
            assert!(
                r.content_type
                    .as_deref()
                    .is_some_and(|t| t.starts_with("application/json"))
                    && e["code"].is_string()
                    && e["message"].is_string()
                    && e["retryable"].is_boolean(),
                "seed {seed}: not the JSON error body for {method} {path} {:?}: {} {}",
                shown(),
                r.status,
                r.text
            );
        }
    }

    /// A mutated copy of `body`: blind byte changes or a JSON value
    /// swapped for a hostile one.
    fn mutate(&mut self, body: &str) -> Vec<u8> {
        if self.rng.random_bool(0.5) {
            if let Ok(mut v) = serde_json::from_str::<Value>(body) {
                for _ in 0..self.rng.random_range(1..=2) {
                    self.swap_value(&mut v);
                }
                return serde_json::to_vec(&v).unwrap_or_default();
            }
        }
        let mut bytes = body.as_bytes().to_vec();
        for _ in 0..self.rng.random_range(1..=4) {
            let pos = self.rng.random_range(0..bytes.len().max(1));
            match self.rng.random_range(0..3) {
                0 if !bytes.is_empty() => bytes[pos] = self.rng.random(),
                1 if !bytes.is_empty() => {
                    bytes.remove(pos);
                }
                _ => {
                    const CHARS: &[u8] = b"{}[],:\"\\0x";
                    let c = CHARS[self.rng.random_range(0..CHARS.len())];
                    bytes.insert(pos.min(bytes.len()), c);
                }
            }
        }
        bytes
    }

    /// Replaces one value of `v` (any depth, chosen at random) with a
    /// hostile one, or puts a NUL into one of its strings.
    fn swap_value(&mut self, v: &mut Value) {
        let mut at = v;
        loop {
            let children = match at {
                Value::Object(m) => m.len(),
                Value::Array(a) => a.len(),
                _ => 0,
            };
            if children == 0 || self.rng.random_bool(0.25) {
                break;
            }
            let i = self.rng.random_range(0..children);
            at = match at {
                Value::Object(m) => m.values_mut().nth(i).expect("index in range"),
                Value::Array(a) => &mut a[i],
                _ => unreachable!("only containers have children"),
            };
        }
        let roll = self.rng.random_range(0..10);
        match at {
            Value::String(s) if roll < 4 => {
                let mut chars: Vec<char> = s.chars().collect();
                let pos = self.rng.random_range(0..=chars.len());
                chars.insert(pos, '\0');
                *s = chars.into_iter().collect();
            }
            // Mostly a hostile value of the same type, so the body gets
            // past type checks to PostgreSQL.
            Value::String(_) if roll < 8 => *at = self.hostile_string(),
            Value::Number(_) if roll < 7 => *at = self.hostile_number(),
            _ => *at = self.hostile(),
        }
    }

    fn hostile_string(&mut self) -> Value {
        const STRINGS: &[&str] = &[
            "",
            "\u{0}",
            "$65536 \u{1F600} é",
            "9223372036854775808",
            "-9223372036854775809",
            "1e400",
            "NaN",
            "-infinity",
            "2024-02-30",
            "10000-01-01T00:00:00Z",
            "P1Y2M3DT4H5M6.7S",
            "AAE",
            "::1/129",
            "8c1f5c1e-9a54-4a2e-8a8e",
            "\\x00",
            "'; SELECT 1; --",
        ];
        match self.rng.random_range(0..=STRINGS.len()) {
            i if i < STRINGS.len() => json!(STRINGS[i]),
            _ => json!("x".repeat(self.rng.random_range(100..20_000))),
        }
    }

    fn hostile_number(&mut self) -> Value {
        match self.rng.random_range(0..8) {
            0 => json!(0),
            1 => json!(-1),
            2 => json!(u64::MAX),
            3 => json!(i64::MIN),
            4 => json!(1.5e300),
            5 => json!(9_007_199_254_740_993u64),
            6 => json!(0.5),
            _ => json!(i64::from(i32::MAX) + 1),
        }
    }

    fn hostile(&mut self) -> Value {
        match self.rng.random_range(0..16) {
            0 => json!("\u{0}"),
            1 => json!(""),
            2 => json!("x".repeat(self.rng.random_range(100..20_000))),
            3 => json!(-1),
            4 => json!(0),
            5 => json!(u64::MAX),
            6 => json!(i64::MIN),
            7 => json!(1.5e300),
            8 => json!(null),
            9 => json!(true),
            10 => json!([]),
            11 => json!({}),
            12 => {
                let depth = self.rng.random_range(20..200);
                let mut deep = json!(1);
                for _ in 0..depth {
                    deep = json!([deep]);
                }
                deep
            }
            13 => Value::Array(vec![json!(1); 65_536]),
            14 => json!("$65536 \u{1F600} é"),
            _ => json!("9223372036854775808"),
        }
    }
}
