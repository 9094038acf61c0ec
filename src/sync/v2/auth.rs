//! The bearer tokens of the v2 services (SPEC §7.4).
//!
//! The v2 services trust JWTs issued by Heimdall. lfx-sync holds Heimdall's
//! signing key and mints its own, so that each write carries the v1 principal
//! that made the change: PS256, header `kid` from configuration, claims
//! `iss=heimdall`, `aud` = the service, `sub` and `principal`, `iat`, `nbf`,
//! `exp` five minutes on, and a random `jti`. Tokens are cached per
//! (audience, principal) and replaced a minute before they expire, so a busy
//! loop signs once per principal every four minutes instead of per request.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{RSA_PSS_SHA256, RsaKeyPair};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use serde_json::json;

pub const ISSUER: &str = "heimdall";
pub const PROJECT_AUDIENCE: &str = "lfx-v2-project-service";
pub const COMMITTEE_AUDIENCE: &str = "lfx-v2-committee-service";

/// How long a token is valid.
pub const LIFETIME: Duration = Duration::from_secs(5 * 60);
/// A cached token is replaced once it has less than this left, so that it
/// cannot expire between signing and the service checking it.
const REFRESH_MARGIN: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    // Never the key material itself: errors end up in logs.
    #[error("cannot read the Heimdall private key: {0}")]
    KeyRead(String),
    #[error("the Heimdall private key is not a usable RSA key: {0}")]
    KeyRejected(String),
    #[error("cannot sign a token: {0}")]
    Sign(String),
}

/// The service principal of lfx-sync, for reads and when no v1 user is known.
pub fn service_principal(heimdall_client_id: &str) -> String {
    format!("{heimdall_client_id}@clients")
}

pub struct Signer {
    key: RsaKeyPair,
    kid: String,
    rng: SystemRandom,
    cache: Mutex<HashMap<(String, String), Cached>>,
}

struct Cached {
    token: String,
    expires: SystemTime,
}

impl std::fmt::Debug for Signer {
    // The key pair stays out of debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("kid", &self.kid).finish()
    }
}

impl Signer {
    /// A key in PEM, PKCS#8 (`PRIVATE KEY`) or PKCS#1 (`RSA PRIVATE KEY`).
    pub fn from_pem(pem: &[u8], kid: impl Into<String>) -> Result<Self, AuthError> {
        let der =
            PrivateKeyDer::from_pem_slice(pem).map_err(|e| AuthError::KeyRead(e.to_string()))?;
        let key = match &der {
            PrivateKeyDer::Pkcs8(k) => RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()),
            PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der()),
            _ => return Err(AuthError::KeyRejected("not an RSA key".into())),
        }
        .map_err(|e| AuthError::KeyRejected(e.to_string()))?;
        Ok(Self {
            key,
            kid: kid.into(),
            rng: SystemRandom::new(),
            cache: Mutex::new(HashMap::new()),
        })
    }

    pub fn from_pem_file(path: &Path, kid: impl Into<String>) -> Result<Self, AuthError> {
        let pem = std::fs::read(path)
            .map_err(|e| AuthError::KeyRead(format!("{}: {e}", path.display())))?;
        Self::from_pem(&pem, kid)
    }

    /// The public half (PKCS#1 `RSAPublicKey` DER), what a verifier needs.
    pub fn public_key_der(&self) -> &[u8] {
        self.key.public().as_ref()
    }

    /// A token for `audience` acting as `principal`, from the cache while it
    /// has more than a minute left.
    pub fn token(&self, audience: &str, principal: &str) -> Result<String, AuthError> {
        let now = SystemTime::now();
        let cache_key = (audience.to_string(), principal.to_string());
        {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(hit) = cache.get(&cache_key)
                && hit
                    .expires
                    .duration_since(now)
                    .is_ok_and(|left| left > REFRESH_MARGIN)
            {
                return Ok(hit.token.clone());
            }
        }
        let token = self.sign(audience, principal, now)?;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        // Principals come and go with v1 users: expired entries are dropped
        // whenever a new token is signed, so the cache stays small.
        cache.retain(|_, c| c.expires > now);
        cache.insert(
            cache_key,
            Cached {
                token: token.clone(),
                expires: now + LIFETIME,
            },
        );
        Ok(token)
    }

    /// Signs a fresh token issued at `now`.
    pub fn sign(
        &self,
        audience: &str,
        principal: &str,
        now: SystemTime,
    ) -> Result<String, AuthError> {
        let iat = now
            .duration_since(UNIX_EPOCH)
            .map_err(|e| AuthError::Sign(e.to_string()))?
            .as_secs();
        let mut jti = [0u8; 16];
        self.rng
            .fill(&mut jti)
            .map_err(|_| AuthError::Sign("no randomness for the jti".into()))?;
        let header = json!({"alg": "PS256", "typ": "JWT", "kid": self.kid});
        let claims = json!({
            "iss": ISSUER,
            "aud": audience,
            "sub": principal,
            "principal": principal,
            "iat": iat,
            "nbf": iat,
            "exp": iat + LIFETIME.as_secs(),
            "jti": URL_SAFE_NO_PAD.encode(jti),
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut signature = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(
                &RSA_PSS_SHA256,
                &self.rng,
                signing_input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| AuthError::Sign("RSA-PSS signing failed".into()))?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{RSA_PSS_2048_8192_SHA256, UnparsedPublicKey};
    use serde_json::Value;

    const KEY: &[u8] = include_bytes!("../../../tests/fixtures/v2/heimdall-test-key.pem");
    const OTHER_KEY: &[u8] = include_bytes!("../../../tests/fixtures/v2/impostor-test-key.pem");

    /// Verifies like a v2 service would; the claims when the signature holds.
    fn verify(token: &str, public_key: &[u8]) -> Option<(Value, Value)> {
        let (input, signature) = token.rsplit_once('.')?;
        let (header, claims) = input.split_once('.')?;
        let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
        UnparsedPublicKey::new(&RSA_PSS_2048_8192_SHA256, public_key)
            .verify(input.as_bytes(), &signature)
            .ok()?;
        let decode = |part: &str| -> Option<Value> {
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).ok()?).ok()
        };
        Some((decode(header)?, decode(claims)?))
    }

    #[test]
    fn tokens_verify_with_the_public_key_and_carry_the_claims() {
        let signer = Signer::from_pem(KEY, "test-kid").unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let token = signer.sign(PROJECT_AUDIENCE, "jdoe", now).unwrap();
        let (header, claims) = verify(&token, signer.public_key_der()).unwrap();
        assert_eq!(
            header,
            json!({"alg": "PS256", "typ": "JWT", "kid": "test-kid"})
        );
        assert_eq!(claims["iss"], "heimdall");
        assert_eq!(claims["aud"], PROJECT_AUDIENCE);
        assert_eq!(claims["sub"], "jdoe");
        assert_eq!(claims["principal"], "jdoe");
        assert_eq!(claims["iat"], json!(1_800_000_000u64));
        assert_eq!(claims["nbf"], json!(1_800_000_000u64));
        assert_eq!(claims["exp"], json!(1_800_000_300u64));
        assert_eq!(claims["jti"].as_str().map(str::len), Some(22));
    }

    #[test]
    fn another_key_does_not_verify() {
        let signer = Signer::from_pem(KEY, "k").unwrap();
        let impostor = Signer::from_pem(OTHER_KEY, "k").unwrap();
        let token = impostor
            .sign(COMMITTEE_AUDIENCE, "x", SystemTime::now())
            .unwrap();
        assert!(verify(&token, signer.public_key_der()).is_none());
    }

    #[test]
    fn tokens_are_cached_per_audience_and_principal() {
        let signer = Signer::from_pem(KEY, "k").unwrap();
        let a = signer.token(PROJECT_AUDIENCE, "jdoe").unwrap();
        assert_eq!(signer.token(PROJECT_AUDIENCE, "jdoe").unwrap(), a);
        assert_ne!(signer.token(COMMITTEE_AUDIENCE, "jdoe").unwrap(), a);
        assert_ne!(signer.token(PROJECT_AUDIENCE, "other").unwrap(), a);
    }

    #[test]
    fn tokens_close_to_expiry_are_replaced() {
        let signer = Signer::from_pem(KEY, "k").unwrap();
        let old = signer
            .sign(PROJECT_AUDIENCE, "jdoe", SystemTime::now())
            .unwrap();
        signer.cache.lock().unwrap().insert(
            (PROJECT_AUDIENCE.into(), "jdoe".into()),
            Cached {
                token: old.clone(),
                expires: SystemTime::now() + REFRESH_MARGIN / 2,
            },
        );
        assert_ne!(signer.token(PROJECT_AUDIENCE, "jdoe").unwrap(), old);
    }

    #[test]
    fn bad_keys_are_errors_without_the_key_text() {
        let err = Signer::from_pem(
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            "k",
        )
        .unwrap_err();
        assert!(matches!(err, AuthError::KeyRejected(_)), "{err}");
        assert!(matches!(
            Signer::from_pem(b"not a pem", "k").unwrap_err(),
            AuthError::KeyRead(_)
        ));
        assert!(!err.to_string().contains("AAAA"));
    }

    #[test]
    fn service_principal_is_the_client_id_at_clients() {
        assert_eq!(service_principal("abc123"), "abc123@clients");
    }
}
