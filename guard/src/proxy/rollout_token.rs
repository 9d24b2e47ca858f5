//! Rollout-scoped tokens (issue 21, docs/rollout-tokens.md): stateless, signed credentials that a
//! trainer mints per rollout (and optionally per attempt), so that the path's rollout id must be
//! the one the token names. This module owns the format, minting and verification; `key_file` the
//! signing keys and their file; `layers::rollout` applies a verified token to a route and to the per-rollout
//! limits.
//!
//! Format: `pgr1.<b64url(payload)>.<b64url(HMAC-SHA256(key, "pgr1." + b64url(payload)))>`, base64url
//! without padding, the payload a JSON object `{"k": key id, "r": rollout, "a": attempt?, "e":
//! expiry in unix seconds}`. The MAC covers the encoded text, so any JSON encoder mints valid
//! tokens (no canonical form to agree on). The key file holds one `KEY_ID HEX_KEY` per line: the
//! first signs, every line verifies (rotation keeps the previous key for a grace period).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use ring::hmac;
use serde::{Deserialize, Serialize};

pub mod key_file;
pub use key_file::SigningKeys;

/// The version prefix; a presented credential that starts with it is read as a token.
pub const PREFIX: &str = "pgr1.";
/// Longer tokens are refused before any decoding (the longest valid one is about 500 bytes).
pub const MAX_TOKEN_BYTES: usize = 1024;
/// The longest lifetime `keys mint` gives, and the furthest expiry the verifier accepts (plus
/// [`CLOCK_SKEW`]): a leaked token is bounded even if a trainer mints with a huge TTL.
pub const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Allowance for a minting host's clock running ahead of this one.
pub const CLOCK_SKEW: Duration = Duration::from_secs(300);

/// What a verified token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub rollout: String,
    pub attempt: Option<String>,
    pub expires: u64,
}

/// Why a token is refused. Every variant is a 401 at the front; none names the token's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the rollout token is malformed")]
    Malformed,
    #[error("the rollout token's signature is not valid")]
    BadSignature,
    #[error("the rollout token has expired")]
    Expired,
    #[error("the rollout token expires further ahead than proxyguard accepts (30 days)")]
    TooLong,
    #[error("rollout tokens are not enabled on this proxy (proxy.rollout_tokens.key_file)")]
    Disabled,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    k: String,
    r: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    a: Option<String>,
    e: u64,
}

/// A rollout or attempt id as paths carry them: `[A-Za-z0-9_-]{1,128}`.
pub fn valid_id(id: &str) -> bool {
    valid_name(id, 128)
}

fn valid_name(id: &str, max: usize) -> bool {
    (1..=max).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn unix(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl SigningKeys {
    /// A token for `rollout` (and `attempt`) that expires at `expires`, signed with the first key.
    pub fn mint(&self, rollout: &str, attempt: Option<&str>, expires: SystemTime) -> String {
        let (id, key) = &self.keys[0];
        let payload = Payload {
            k: id.clone(),
            r: rollout.to_owned(),
            a: attempt.map(str::to_owned),
            e: unix(expires),
        };
        let json = serde_json::to_vec(&payload).expect("a payload of strings and a number");
        let signed = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(json));
        let tag = hmac::sign(key, signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    /// The claims of `token` if it is well formed, signed by a key in this file and current at
    /// `now`. The tag is compared in constant time (`ring::hmac::verify`); sizes are bounded before
    /// anything is decoded.
    pub fn verify(&self, token: &[u8], now: SystemTime) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed);
        }
        let rest = token
            .strip_prefix(PREFIX.as_bytes())
            .ok_or(TokenError::Malformed)?;
        let dot = rest
            .iter()
            .position(|&b| b == b'.')
            .ok_or(TokenError::Malformed)?;
        let (encoded, tag) = (&rest[..dot], &rest[dot + 1..]);
        let signed = &token[..PREFIX.len() + dot];
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| TokenError::Malformed)?;
        if tag.len() != 32 {
            return Err(TokenError::Malformed);
        }
        let json = URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| TokenError::Malformed)?;
        let payload: Payload = serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
        // The key id is not secret; looking it up by value leaks nothing.
        let key = self
            .keys
            .iter()
            .find(|(id, _)| *id == payload.k)
            .map(|(_, key)| key)
            .ok_or(TokenError::BadSignature)?;
        hmac::verify(key, signed, &tag).map_err(|_| TokenError::BadSignature)?;
        if !valid_id(&payload.r) || payload.a.as_deref().is_some_and(|a| !valid_id(a)) {
            return Err(TokenError::Malformed);
        }
        let now = unix(now);
        if payload.e <= now {
            return Err(TokenError::Expired);
        }
        if payload.e > now + (MAX_TTL + CLOCK_SKEW).as_secs() {
            return Err(TokenError::TooLong);
        }
        Ok(Claims {
            rollout: payload.r,
            attempt: payload.a,
            expires: payload.e,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    const KEY_A: &str = "a1 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const KEY_B: &str = "b2 ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

    fn keys(text: &str) -> SigningKeys {
        SigningKeys::parse(text, Path::new("test.key")).unwrap()
    }

    fn in_an_hour() -> SystemTime {
        SystemTime::now() + Duration::from_secs(3600)
    }

    #[test]
    fn round_trip_with_and_without_attempt() {
        let keys = keys(KEY_A);
        for attempt in [None, Some("at-1")] {
            let token = keys.mint("ro_1", attempt, in_an_hour());
            assert!(token.starts_with(PREFIX) && token.len() < MAX_TOKEN_BYTES);
            let claims = keys.verify(token.as_bytes(), SystemTime::now()).unwrap();
            assert_eq!(claims.rollout, "ro_1");
            assert_eq!(claims.attempt.as_deref(), attempt);
        }
    }

    #[test]
    fn tampered_truncated_and_foreign_tokens_are_refused() {
        let keys_a = keys(KEY_A);
        let token = keys_a.mint("ro-1", None, in_an_hour());
        let now = SystemTime::now();
        let (signed, tag) = token.rsplit_once('.').unwrap();
        // Another rollout's payload under the original tag.
        let forged_payload = URL_SAFE_NO_PAD.encode(br#"{"k":"a1","r":"ro-2","e":4102444800}"#);
        let forged = format!("{PREFIX}{forged_payload}.{tag}");
        let mut flipped = token.clone().into_bytes();
        let last = flipped.len() - 2;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        let huge = format!("{token}{}", "A".repeat(MAX_TOKEN_BYTES));
        let cases: Vec<(&str, Vec<u8>, TokenError)> = vec![
            (
                "forged payload",
                forged.into_bytes(),
                TokenError::BadSignature,
            ),
            ("flipped tag", flipped, TokenError::BadSignature),
            (
                "truncated",
                token[..token.len() - 5].into(),
                TokenError::Malformed,
            ),
            ("no tag", signed.into(), TokenError::Malformed),
            (
                "empty tag",
                format!("{signed}.").into_bytes(),
                TokenError::Malformed,
            ),
            ("prefix only", PREFIX.into(), TokenError::Malformed),
            (
                "other version",
                token.replacen("pgr1", "pgr2", 1).into_bytes(),
                TokenError::Malformed,
            ),
            (
                "padded",
                format!("{token}=").into_bytes(),
                TokenError::Malformed,
            ),
            ("huge", huge.into_bytes(), TokenError::Malformed),
            (
                "not utf-8",
                b"pgr1.\xff\xfe.\x00".to_vec(),
                TokenError::Malformed,
            ),
        ];
        for (case, token, want) in cases {
            assert_eq!(keys_a.verify(&token, now), Err(want), "{case}");
        }
        // Signed with another key under the same id.
        let other = keys(&KEY_B.replacen("b2", "a1", 1));
        let token = other.mint("ro-1", None, in_an_hour());
        assert_eq!(
            keys_a.verify(token.as_bytes(), now),
            Err(TokenError::BadSignature)
        );
        // An unknown key id.
        let token = keys(KEY_B).mint("ro-1", None, in_an_hour());
        assert_eq!(
            keys_a.verify(token.as_bytes(), now),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn expiry_is_enforced_and_bounded() {
        let keys = keys(KEY_A);
        let now = SystemTime::now();
        let past = keys.mint("r", None, now - Duration::from_secs(1));
        assert_eq!(keys.verify(past.as_bytes(), now), Err(TokenError::Expired));
        let at_now = keys.mint("r", None, now);
        assert_eq!(
            keys.verify(at_now.as_bytes(), now),
            Err(TokenError::Expired)
        );
        let far = keys.mint(
            "r",
            None,
            now + MAX_TTL + CLOCK_SKEW + Duration::from_secs(60),
        );
        assert_eq!(keys.verify(far.as_bytes(), now), Err(TokenError::TooLong));
        let longest = keys.mint("r", None, now + MAX_TTL);
        assert!(keys.verify(longest.as_bytes(), now).is_ok());
    }

    #[test]
    fn rotation_signs_with_the_first_key_and_verifies_with_all() {
        let old = keys(KEY_A);
        let rotated = keys(&format!("{KEY_B}\n{KEY_A}\n"));
        let now = SystemTime::now();
        let from_old = old.mint("r", None, in_an_hour());
        assert!(rotated.verify(from_old.as_bytes(), now).is_ok(), "grace");
        let from_new = rotated.mint("r", None, in_an_hour());
        assert_eq!(rotated.current_id(), "b2");
        assert_eq!(
            old.verify(from_new.as_bytes(), now),
            Err(TokenError::BadSignature)
        );
        let retired = keys(KEY_B);
        assert_eq!(
            retired.verify(from_old.as_bytes(), now),
            Err(TokenError::BadSignature),
            "a removed key no longer verifies"
        );
    }

    #[test]
    fn ids_outside_the_path_alphabet_are_refused_even_when_signed() {
        let keys = keys(KEY_A);
        for bad in ["", "a/b", "a.b", &"x".repeat(129)] {
            let token = keys.mint(bad, None, in_an_hour());
            assert_eq!(
                keys.verify(token.as_bytes(), SystemTime::now()),
                Err(TokenError::Malformed),
                "{bad:?}"
            );
        }
    }

    /// The Python function in docs/rollout-tokens.md, run as the doc gives it (stdlib only),
    /// mints a token this verifier accepts: the doc and the format cannot drift apart.
    #[test]
    fn the_documented_python_minter_makes_valid_tokens() {
        let doc = include_str!("../../../docs/rollout-tokens.md");
        let code = doc
            .split("```python\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("docs/rollout-tokens.md has a ```python block");
        let venv = std::env::var_os("PROXYGUARD_VENV")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/proxyguard/venv"))
            });
        let python = venv
            .map(|v| v.join("bin/python"))
            .filter(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("python3"));
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("tokens.key");
        std::fs::write(&key_file, format!("{KEY_B}\n{KEY_A}\n")).unwrap();
        let script = format!(
            "{code}\nimport sys\nprint(mint_rollout_token(sys.argv[1], 'ro-7', 'at-2', ttl_seconds=600))\nprint(mint_rollout_token(sys.argv[1], 'ro-8'))\n"
        );
        let output = match std::process::Command::new(&python)
            .arg("-c")
            .arg(&script)
            .arg(&key_file)
            .output()
        {
            Ok(output) => output,
            Err(err) => {
                eprintln!("skipped: no Python at {} ({err})", python.display());
                return;
            }
        };
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8(output.stdout).unwrap();
        let tokens: Vec<&str> = stdout.lines().collect();
        let keys = keys(&format!("{KEY_B}\n{KEY_A}\n"));
        let now = SystemTime::now();
        let first = keys.verify(tokens[0].as_bytes(), now).unwrap();
        assert_eq!(
            (first.rollout.as_str(), first.attempt.as_deref()),
            ("ro-7", Some("at-2"))
        );
        assert!(first.expires <= unix(now) + 601);
        let second = keys.verify(tokens[1].as_bytes(), now).unwrap();
        assert_eq!((second.rollout.as_str(), second.attempt), ("ro-8", None));
        assert!(
            second.expires > unix(now) + 3600,
            "the default ttl is a day"
        );
    }
}
