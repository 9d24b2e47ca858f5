//! Client authentication (threat 1): the key from `Authorization: Bearer`, `x-api-key` or
//! `api-key`, checked against stored SHA-256 hashes in constant time; and the removal of every
//! header the upstream would read a credential from (`upstream_surface::CREDENTIAL_HEADERS` and the
//! configured custom key header), so only the injected upstream key identifies the caller there.
//!
//! Why a fast, unsalted hash is enough: the keys are 256-bit random strings that `keys add`
//! generates, not passwords. Salting and slow hashing defend against guessing low-entropy secrets
//! from a leaked hash; for a uniformly random 256-bit key, inverting SHA-256 (or guessing the key)
//! is infeasible however fast the hash is. Fast also means auth costs microseconds per request.
//!
//! A credential that starts with `pgr1.` is a rollout token (`proxy::rollout_token`), verified by
//! its signature instead of looked up; it authenticates as the one pseudo-key [`ROLLOUT_KEY_NAME`]
//! with the default caps and no control headers of its own.

use std::{sync::Arc, time::SystemTime};

use http::{header, HeaderMap, HeaderName, StatusCode};
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::proxy::{
    reject::Reject,
    rollout_token::{self, Claims, SigningKeys, TokenError},
    upstream_surface::CREDENTIAL_HEADERS,
};

/// The key name of every rollout token in metrics (the audit line names the rollout). A plain
/// key's name cannot contain `:`, so no plain key can share it, its limits or its admin rights.
pub const ROLLOUT_KEY_NAME: &str = "rollout:*";

/// Headers a client key may come in; all are removed before forwarding.
pub const KEY_HEADERS: [HeaderName; 3] = [
    header::AUTHORIZATION,
    HeaderName::from_static("x-api-key"),
    HeaderName::from_static("api-key"),
];

#[derive(Debug, Clone)]
pub struct StoredKey {
    pub name: Arc<str>,
    pub hash: [u8; 32],
    pub expires: Option<SystemTime>,
    pub rpm: Option<u32>,
    /// Control headers this key may send upstream (`proxy.keys[].upstream_allow`).
    pub upstream_allow: Vec<HeaderName>,
    /// `proxy.body.caps` with this key's overrides (`proxy.keys[].caps`).
    pub caps: crate::config::proxy::Caps,
    /// Budgets, models and sources (`proxy.keys[]`; issue 14).
    pub policy: crate::proxy::budget::policy::Policy,
}

#[derive(Debug, Clone)]
pub struct KeyStore {
    keys: Vec<StoredKey>,
    /// The rollout-token signing keys (`proxy.rollout_tokens.key_file`), when tokens are on.
    tokens: Option<SigningKeys>,
    /// What a rollout token authenticates as.
    token_key: StoredKey,
}

/// Who a request authenticated as: a stored key, or a rollout token and what it grants.
#[derive(Debug)]
pub struct Caller<'a> {
    pub key: &'a StoredKey,
    pub rollout: Option<Claims>,
    /// The audit name: the key's name, or `rollout:<id>` for a token.
    pub name: Arc<str>,
}

impl KeyStore {
    /// `caps` are what rollout tokens get (`proxy.body.caps`).
    pub fn new(
        keys: Vec<StoredKey>,
        tokens: Option<SigningKeys>,
        caps: crate::config::proxy::Caps,
    ) -> KeyStore {
        KeyStore {
            keys,
            tokens,
            token_key: StoredKey {
                name: ROLLOUT_KEY_NAME.into(),
                // Never compared: a token is verified by its signature, not looked up.
                hash: [0; 32],
                // A token carries its own expiry.
                expires: None,
                rpm: None,
                upstream_allow: Vec::new(),
                caps,
                policy: Default::default(),
            },
        }
    }

    /// Each key's name and policy.
    pub fn policies(&self) -> Vec<(Arc<str>, crate::proxy::budget::policy::Policy)> {
        self.keys
            .iter()
            .map(|key| (key.name.clone(), key.policy.clone()))
            .collect()
    }

    /// The stored keys (the fleet compares them across a reload, for revocations).
    pub fn keys(&self) -> &[StoredKey] {
        &self.keys
    }

    /// The caller the request's credential names, if it is known and current.
    pub fn authenticate(&self, headers: &HeaderMap, now: SystemTime) -> Result<Caller<'_>, Reject> {
        let unauthorized =
            |reason, message: &str| Reject::new(StatusCode::UNAUTHORIZED, reason, message);
        let presented = presented_key(headers).ok_or_else(|| {
            unauthorized(
                "missing_key",
                "an API key is required (Authorization: Bearer, x-api-key or api-key)",
            )
        })?;
        if presented.starts_with(rollout_token::PREFIX.as_bytes()) {
            let claims = self
                .tokens
                .as_ref()
                .ok_or(TokenError::Disabled)
                .and_then(|keys| keys.verify(presented, now))
                .map_err(|err| {
                    let reason = match err {
                        TokenError::Expired => "token_expired",
                        _ => "bad_token",
                    };
                    unauthorized(reason, &err.to_string())
                })?;
            return Ok(Caller {
                key: &self.token_key,
                name: format!("rollout:{}", claims.rollout).into(),
                rollout: Some(claims),
            });
        }
        self.authenticate_key(presented, now).map(|key| Caller {
            key,
            rollout: None,
            name: key.name.clone(),
        })
    }

    fn authenticate_key(&self, presented: &[u8], now: SystemTime) -> Result<&StoredKey, Reject> {
        let unauthorized =
            |reason, message: &str| Reject::new(StatusCode::UNAUTHORIZED, reason, message);
        let digest: [u8; 32] = Sha256::digest(presented).into();
        // Every stored hash is compared, without an early exit, so timing says nothing about
        // which key (if any) matched or how many bytes of a hash were right.
        let mut found = 0u32;
        let mut index = 0u32;
        for (i, key) in self.keys.iter().enumerate() {
            let hit = key.hash[..].ct_eq(&digest[..]);
            index.conditional_assign(&(i as u32), hit);
            found.conditional_assign(&1, hit);
        }
        if found == 0 {
            return Err(unauthorized("bad_key", "the API key is not valid"));
        }
        let key = &self.keys[index as usize];
        if key.expires.is_some_and(|expires| expires <= now) {
            return Err(unauthorized("key_expired", "the API key has expired"));
        }
        Ok(key)
    }
}

/// The first key-bearing header, as bytes. A present but malformed `Authorization` counts as
/// no key: it is never compared.
pub fn presented_key(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.as_bytes();
        let (scheme, rest) = value.split_at(value.len().min(7));
        return (scheme.eq_ignore_ascii_case(b"bearer ") && !rest.is_empty()).then_some(rest);
    }
    KEY_HEADERS[1..]
        .iter()
        .find_map(|name| headers.get(name))
        .map(|value| value.as_bytes())
        .filter(|value| !value.is_empty())
}

/// Whether `name` is removed before forwarding as a credential: one the upstream reads a key
/// from, the configured custom key header, or a `_` spelling of either (`x_api_key`), which a
/// server that folds `_` into `-` would read so.
pub fn is_credential(name: &HeaderName, custom: Option<&HeaderName>) -> bool {
    let targets = CREDENTIAL_HEADERS
        .iter()
        .copied()
        .chain(custom.map(HeaderName::as_str));
    let mut targets = targets;
    if name.as_str().contains('_') {
        targets.any(|target| super::folds_to(name, target))
    } else {
        targets.any(|target| name.as_str() == target)
    }
}

/// Removes every credential header (see [`is_credential`]).
pub fn strip(headers: &mut HeaderMap, custom: Option<&HeaderName>) {
    let found: Vec<HeaderName> = headers
        .keys()
        .filter(|name| is_credential(name, custom))
        .cloned()
        .collect();
    for name in found {
        headers.remove(name);
    }
}

/// Lower-case hex SHA-256, the form config stores.
pub fn hash_hex(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table row's headers: (name, value) pairs.
    type Headers = &'static [(&'static str, &'static str)];
    use std::time::Duration;

    fn store() -> KeyStore {
        let key = |name: &str, secret: &str, expires| StoredKey {
            name: name.into(),
            hash: Sha256::digest(secret.as_bytes()).into(),
            expires,
            rpm: None,
            upstream_allow: Vec::new(),
            caps: Default::default(),
            policy: Default::default(),
        };
        KeyStore::new(
            vec![
                key("alice", "sk-alice", None),
                key("bob", "sk-bob", None),
                key(
                    "old",
                    "sk-old",
                    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(10)),
                ),
            ],
            Some(signing()),
            Default::default(),
        )
    }

    fn signing() -> SigningKeys {
        SigningKeys::parse(
            &format!("k1 {}", "ab".repeat(32)),
            std::path::Path::new("t"),
        )
        .unwrap()
    }

    #[test]
    fn table() {
        let cases: &[(Headers, Result<&str, &str>)] = &[
            (&[("authorization", "Bearer sk-alice")], Ok("alice")),
            (&[("authorization", "bearer sk-bob")], Ok("bob")),
            (&[("x-api-key", "sk-bob")], Ok("bob")),
            (&[("api-key", "sk-alice")], Ok("alice")),
            (&[], Err("missing_key")),
            (
                &[("authorization", "Basic c2stYWxpY2U=")],
                Err("missing_key"),
            ),
            (&[("authorization", "Bearer ")], Err("missing_key")),
            (&[("authorization", "Bearer sk-alicf")], Err("bad_key")),
            (&[("x-api-key", "sk-alice ")], Err("bad_key")),
            (&[("authorization", "Bearer sk-old")], Err("key_expired")),
        ];
        let store = store();
        for (headers, expected) in cases {
            let mut map = HeaderMap::new();
            for (name, value) in headers.iter() {
                map.insert(HeaderName::from_static(name), value.parse().unwrap());
            }
            let got = store
                .authenticate(&map, SystemTime::now())
                .map(|caller| caller.name.to_string())
                .map_err(|reject| {
                    assert_eq!(reject.status, 401);
                    reject.reason
                });
            assert_eq!(got.as_deref().map_err(|r| *r), *expected, "{headers:?}");
        }
    }

    #[test]
    fn tokens_authenticate_as_their_rollout() {
        let store = store();
        let now = SystemTime::now();
        let good = signing().mint("ro-1", Some("at-1"), now + Duration::from_secs(60));
        let expired = signing().mint("ro-1", None, now - Duration::from_secs(1));
        let other_key = SigningKeys::parse(
            &format!("k1 {}", "cd".repeat(32)),
            std::path::Path::new("t"),
        )
        .unwrap()
        .mint("ro-1", None, now + Duration::from_secs(60));
        let cases: [(&str, &str, Result<&str, &str>); 5] = [
            (
                "authorization",
                &format!("Bearer {good}"),
                Ok("rollout:ro-1"),
            ),
            ("x-api-key", &good, Ok("rollout:ro-1")),
            ("api-key", &expired, Err("token_expired")),
            ("api-key", &other_key, Err("bad_token")),
            ("x-api-key", "pgr1.garbage", Err("bad_token")),
        ];
        for (header, value, expected) in cases {
            let mut map = HeaderMap::new();
            map.insert(HeaderName::from_static(header), value.parse().unwrap());
            let got = store.authenticate(&map, now);
            match (got, expected) {
                (Ok(caller), Ok(name)) => {
                    assert_eq!(&*caller.name, name);
                    assert_eq!(&*caller.key.name, ROLLOUT_KEY_NAME);
                    let claims = caller.rollout.unwrap();
                    assert_eq!(
                        (claims.rollout.as_str(), claims.attempt.as_deref()),
                        ("ro-1", Some("at-1"))
                    );
                }
                (Err(reject), Err(reason)) => {
                    assert_eq!((reject.status.as_u16(), reject.reason), (401, reason));
                }
                (got, _) => panic!("{header}: {got:?}, wanted {expected:?}"),
            }
        }
        let without = KeyStore::new(Vec::new(), None, Default::default());
        let mut map = HeaderMap::new();
        map.insert(HeaderName::from_static("x-api-key"), good.parse().unwrap());
        assert_eq!(
            without.authenticate(&map, now).unwrap_err().reason,
            "bad_token"
        );
    }

    #[test]
    fn strip_removes_every_key_header() {
        let mut map = HeaderMap::new();
        for name in KEY_HEADERS.iter().cloned().chain(
            CREDENTIAL_HEADERS
                .iter()
                .map(|name| HeaderName::from_static(name)),
        ) {
            map.insert(name, "secret".parse().unwrap());
        }
        for name in [
            "x-my-key",
            "x_my_key",
            "x_litellm_api_key",
            "X-Goog-Api-Key",
        ] {
            map.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                "secret".parse().unwrap(),
            );
        }
        map.insert(header::ACCEPT, "*/*".parse().unwrap());
        map.insert(
            HeaderName::from_static("x_api_key"),
            "secret".parse().unwrap(),
        );
        map.insert(
            HeaderName::from_static("api_key"),
            "secret".parse().unwrap(),
        );
        map.insert(HeaderName::from_static("x_other"), "1".parse().unwrap());
        strip(&mut map, Some(&HeaderName::from_static("x-my-key")));
        let mut kept: Vec<&str> = map.keys().map(|name| name.as_str()).collect();
        kept.sort();
        assert_eq!(kept, ["accept", "x_other"]);
    }

    #[test]
    fn hash_is_lower_hex() {
        assert_eq!(
            hash_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
