//! The authorization server's public keys (a JWKS, RFC 7517): loaded from a file or a URL,
//! cached, and refreshed.
//!
//! Refresh happens on two occasions. Periodically: a lookup that finds the set older than
//! `jwks_refresh_secs` starts a refresh in the background and goes on with the keys it has, so
//! no request waits for the authorization server (and a rotated file is picked up the same way).
//! On an unknown `kid`: the authorization server may have rotated keys, so the set is fetched
//! once more before the token is refused, but at most once per
//! [`UNKNOWN_KID_REFRESH_INTERVAL`], so a flood of tokens with made-up kids cannot turn Ferry into
//! a tool for hammering the authorization server. A failed refresh keeps the keys Ferry had.
//!
//! Only keys that can verify RS256 (RSA, at least 2048 bits) or ES256 (EC P-256) are kept, and a
//! key's `alg`, `use` and `key_ops`, when present, must say so. Symmetric (`oct`) keys in a JWKS
//! are never used: a published HMAC key would let anybody mint tokens.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

use super::AuthError;

/// Least time between two refreshes caused by unknown kids.
pub const UNKNOWN_KID_REFRESH_INTERVAL: Duration = Duration::from_secs(30);

/// Least time before retrying after a failed refresh, when `jwks_refresh_secs` is longer.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);

/// A JWKS is a few kilobytes; anything far larger is not one.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// RSA keys shorter than this are refused (NIST SP 800-131A).
const MIN_RSA_MODULUS_BYTES: usize = 2048 / 8;

/// Where the key set comes from.
pub(crate) enum Source {
    File(PathBuf),
    Url {
        client: reqwest::Client,
        url: reqwest::Url,
    },
}

impl Source {
    /// For logs and errors.
    pub(crate) fn location(&self) -> String {
        match self {
            Source::File(path) => path.display().to_string(),
            Source::Url { url, .. } => url.to_string(),
        }
    }

    /// Reads or fetches the document and keeps its usable keys.
    async fn load(&self) -> Result<KeySet, String> {
        let bytes = match self {
            Source::File(path) => {
                let bytes = tokio::fs::read(path).await.map_err(|e| e.to_string())?;
                if bytes.len() > MAX_JWKS_BYTES {
                    return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
                }
                bytes
            }
            Source::Url { client, url } => fetch(client, url).await?,
        };
        KeySet::parse(&bytes)
    }
}

async fn fetch(client: &reqwest::Client, url: &reqwest::Url) -> Result<Vec<u8>, String> {
    let mut response = client
        .get(url.clone())
        .header(http::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| error_chain(&e))?;
    if !response.status().is_success() {
        return Err(format!("HTTP status {}", response.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| error_chain(&e))? {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// reqwest's own message is often just "error sending request"; the cause says why.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// An HTTP client builder for URLs Ferry calls (JWKS, HTTP destinations): rustls with the ring
/// provider handed over ready-made, so reqwest never looks for a process-wide provider and
/// aws-lc-rs stays out of the build (FINDINGS.md); certificates are checked against the platform's
/// roots. No redirects: the configured URL is the one trusted, and a redirect could lead to plain
/// HTTP.
pub fn http_client_builder() -> Result<reqwest::ClientBuilder, String> {
    use rustls_platform_verifier::BuilderVerifierExt as _;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_platform_verifier())
        .map_err(|e| format!("TLS set-up failed: {e}"))?
        .with_no_client_auth();
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION"))))
}

/// The HTTP client for JWKS URLs.
pub(crate) fn http_client() -> Result<reqwest::Client, String> {
    http_client_builder()?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| format!("HTTP client set-up failed: {}", error_chain(&e)))
}

/// A key Ferry will verify signatures with.
struct VerifyingKey {
    kid: String,
    alg: Algorithm,
    key: DecodingKey,
}

/// The usable keys of one JWKS document.
#[derive(Default)]
pub(crate) struct KeySet {
    keys: Vec<VerifyingKey>,
}

/// The kids and algorithms (the keys are public, but long and of no use in a log).
impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|k| (&k.kid, k.alg)))
            .finish()
    }
}

/// The result of looking a token's kid and alg up.
pub(crate) enum Lookup {
    Found(DecodingKey),
    /// The kid is known but its key is for another algorithm: a confusion attempt or a broken
    /// issuer, refused either way.
    WrongAlgorithm,
    Unknown,
}

/// One entry of `keys`, read loosely so one key Ferry cannot use does not spoil the others.
#[derive(Deserialize)]
struct RawJwk {
    kty: Option<String>,
    kid: Option<String>,
    #[serde(rename = "use")]
    key_use: Option<String>,
    key_ops: Option<Vec<String>>,
    alg: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<serde_json::Value>,
}

impl KeySet {
    /// The usable keys of a JWKS document; an error when it is not one or has none Ferry can use.
    pub(crate) fn parse(json: &[u8]) -> Result<KeySet, String> {
        let raw: RawJwks = serde_json::from_slice(json)
            .map_err(|e| format!("not a JWKS document (an object with \"keys\"): {e}"))?;
        let total = raw.keys.len();
        let mut keys = Vec::new();
        for value in raw.keys {
            let jwk: RawJwk = match serde_json::from_value(value) {
                Ok(jwk) => jwk,
                Err(error) => {
                    tracing::debug!(%error, "JWKS entry skipped: not a readable key.");
                    continue;
                }
            };
            match usable_key(&jwk) {
                Ok(key) => keys.push(key),
                Err(reason) => {
                    tracing::debug!(kid = ?jwk.kid, reason, "JWKS key skipped.");
                }
            }
        }
        if keys.is_empty() {
            return Err(format!(
                "none of its {total} keys can verify RS256 or ES256 signatures (each needs a kid)"
            ));
        }
        Ok(KeySet { keys })
    }

    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    pub(crate) fn find(&self, kid: &str, alg: Algorithm) -> Lookup {
        let mut known = false;
        for k in self.keys.iter().filter(|k| k.kid == kid) {
            if k.alg == alg {
                return Lookup::Found(k.key.clone());
            }
            known = true;
        }
        if known {
            Lookup::WrongAlgorithm
        } else {
            Lookup::Unknown
        }
    }
}

/// Turns a JWK into a verifying key, or says why not.
fn usable_key(jwk: &RawJwk) -> Result<VerifyingKey, &'static str> {
    let kid = jwk.kid.clone().ok_or("no kid")?;
    if jwk.key_use.as_deref().is_some_and(|u| u != "sig") {
        return Err("use is not sig");
    }
    if jwk
        .key_ops
        .as_ref()
        .is_some_and(|ops| !ops.iter().any(|o| o == "verify"))
    {
        return Err("key_ops lacks verify");
    }
    let alg = jwk.alg.as_deref();
    match jwk.kty.as_deref() {
        Some("RSA") => {
            if alg.is_some_and(|a| a != "RS256") {
                return Err("RSA key for an algorithm other than RS256");
            }
            let n = decode_b64(jwk.n.as_deref()).ok_or("RSA key without a readable n")?;
            let e = decode_b64(jwk.e.as_deref()).ok_or("RSA key without a readable e")?;
            let significant = n.iter().skip_while(|b| **b == 0).count();
            if significant < MIN_RSA_MODULUS_BYTES {
                return Err("RSA key shorter than 2048 bits");
            }
            Ok(VerifyingKey {
                kid,
                alg: Algorithm::RS256,
                key: DecodingKey::from_rsa_raw_components(&n, &e),
            })
        }
        Some("EC") => {
            if jwk.crv.as_deref() != Some("P-256") {
                return Err("EC key on a curve other than P-256");
            }
            if alg.is_some_and(|a| a != "ES256") {
                return Err("EC key for an algorithm other than ES256");
            }
            let (Some(x), Some(y)) = (jwk.x.as_deref(), jwk.y.as_deref()) else {
                return Err("EC key without x and y");
            };
            let key = DecodingKey::from_ec_components(x, y).map_err(|_| "EC key unreadable")?;
            Ok(VerifyingKey {
                kid,
                alg: Algorithm::ES256,
                key,
            })
        }
        Some("oct") => Err("symmetric keys from a JWKS are never used"),
        _ => Err("key type other than RSA or EC"),
    }
}

fn decode_b64(text: Option<&str>) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD
        .decode(text?.trim_end_matches('='))
        .ok()
        .filter(|b| !b.is_empty())
}

/// What changes between refreshes, under one lock.
struct State {
    keys: Arc<KeySet>,
    /// When the next periodic refresh is due.
    next_refresh: Instant,
    /// A background refresh is running; don't start another.
    refreshing: bool,
    /// The last refresh an unknown kid was allowed to cause.
    last_unknown_kid_refresh: Option<Instant>,
    /// Counts finished refresh attempts, so a caller that waited for someone else's refresh can
    /// tell and need not fetch again.
    attempts: u64,
}

/// The cached key set and its refresh policy.
pub(crate) struct JwksCache {
    source: Source,
    refresh_every: Duration,
    state: Mutex<State>,
    /// One fetch at a time.
    fetching: tokio::sync::Mutex<()>,
}

impl JwksCache {
    /// Loads the key set once; an error (bad file, endpoint down) stops the start, so a
    /// misconfiguration shows at once rather than as 401s on the first requests.
    pub(crate) async fn load(source: Source, refresh_every: Duration) -> Result<Self, AuthError> {
        let keys = source.load().await.map_err(|reason| AuthError::Keys {
            location: source.location(),
            reason,
        })?;
        tracing::info!(location = %source.location(), keys = keys.len(), "JWKS loaded.");
        Ok(JwksCache {
            source,
            refresh_every,
            state: Mutex::new(State {
                keys: Arc::new(keys),
                next_refresh: Instant::now() + refresh_every,
                refreshing: false,
                last_unknown_kid_refresh: None,
                attempts: 0,
            }),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    /// Where the keys come from, for logs.
    pub(crate) fn location(&self) -> String {
        self.source.location()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a handful of plain values, valid whatever a panicking holder did.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The key for `kid` and `alg`, refreshing as the module docs describe.
    pub(crate) async fn key(
        self: &Arc<Self>,
        kid: &str,
        alg: Algorithm,
    ) -> Result<DecodingKey, AuthError> {
        let keys = {
            let mut state = self.state();
            if !state.refreshing
                && Instant::now() >= state.next_refresh
                && let Ok(runtime) = tokio::runtime::Handle::try_current()
            {
                state.refreshing = true;
                let cache = Arc::clone(self);
                runtime.spawn(async move {
                    cache.refresh("periodic").await;
                    cache.state().refreshing = false;
                });
            }
            Arc::clone(&state.keys)
        };
        match keys.find(kid, alg) {
            Lookup::Found(key) => return Ok(key),
            Lookup::WrongAlgorithm => return Err(AuthError::Algorithm),
            Lookup::Unknown => {}
        }
        if !self.may_refresh_for_unknown_kid() {
            tracing::debug!(kid, "Unknown kid; JWKS refreshed recently, not again yet.");
            return Err(AuthError::UnknownKey);
        }
        self.refresh("unknown kid").await;
        let keys = Arc::clone(&self.state().keys);
        match keys.find(kid, alg) {
            Lookup::Found(key) => Ok(key),
            Lookup::WrongAlgorithm => Err(AuthError::Algorithm),
            Lookup::Unknown => {
                tracing::debug!(kid, "Unknown kid, also after a JWKS refresh.");
                Err(AuthError::UnknownKey)
            }
        }
    }

    /// Claims the once-per-interval refresh for unknown kids, if it is free.
    fn may_refresh_for_unknown_kid(&self) -> bool {
        let mut state = self.state();
        let now = Instant::now();
        match state.last_unknown_kid_refresh {
            Some(last) if now.duration_since(last) < UNKNOWN_KID_REFRESH_INTERVAL => false,
            _ => {
                state.last_unknown_kid_refresh = Some(now);
                true
            }
        }
    }

    /// Fetches the set again. A failure is logged and keeps the current keys.
    async fn refresh(&self, reason: &'static str) {
        let seen = self.state().attempts;
        let _fetching = self.fetching.lock().await;
        if self.state().attempts != seen {
            // Somebody refreshed while we waited for the lock: their keys are as new as ours
            // would be.
            return;
        }
        let result = self.source.load().await;
        let mut state = self.state();
        state.attempts += 1;
        let now = Instant::now();
        match result {
            Ok(keys) => {
                tracing::debug!(location = %self.source.location(), reason, keys = keys.len(), "JWKS refreshed.");
                state.keys = Arc::new(keys);
                state.next_refresh = now + self.refresh_every;
            }
            Err(error) => {
                tracing::warn!(location = %self.source.location(), reason, %error, "Cannot refresh the JWKS; keeping the keys already loaded.");
                state.next_refresh = now + self.refresh_every.min(RETRY_AFTER_FAILURE);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 2048-bit modulus (all ones: never used to verify, only to pass the size check).
    fn modulus(bytes: usize) -> String {
        URL_SAFE_NO_PAD.encode(vec![0xff; bytes])
    }

    fn rsa(kid: &str, extra: &str) -> String {
        format!(
            r#"{{"kty":"RSA","kid":"{kid}","n":"{}","e":"AQAB"{extra}}}"#,
            modulus(256)
        )
    }

    // A valid P-256 point (the generator).
    const EC_X: &str = "axfR8uEsQkf4vOblY6RA8ncDfYEt6zOg9KE5RdiYwpY";
    const EC_Y: &str = "T-NC4v4af5uO5-tKfA-eFivOM1drMV7Oy7ZAaDe_UfU";

    fn ec(kid: &str, extra: &str) -> String {
        format!(r#"{{"kty":"EC","crv":"P-256","kid":"{kid}","x":"{EC_X}","y":"{EC_Y}"{extra}}}"#)
    }

    fn set(keys: &[String]) -> Result<KeySet, String> {
        KeySet::parse(format!(r#"{{"keys":[{}]}}"#, keys.join(",")).as_bytes())
    }

    fn kids(set: &KeySet) -> Vec<(&str, Algorithm)> {
        set.keys.iter().map(|k| (k.kid.as_str(), k.alg)).collect()
    }

    #[test]
    fn rsa_and_p256_keys_are_kept_for_their_one_algorithm() {
        let s = set(&[
            rsa("r1", ""),
            rsa("r2", r#","alg":"RS256","use":"sig""#),
            ec("e1", r#","alg":"ES256","key_ops":["verify"]"#),
        ])
        .unwrap();
        assert_eq!(
            kids(&s),
            [
                ("r1", Algorithm::RS256),
                ("r2", Algorithm::RS256),
                ("e1", Algorithm::ES256)
            ]
        );
        assert!(matches!(s.find("r1", Algorithm::RS256), Lookup::Found(_)));
        assert!(matches!(
            s.find("r1", Algorithm::ES256),
            Lookup::WrongAlgorithm
        ));
        assert!(matches!(
            s.find("r1", Algorithm::HS256),
            Lookup::WrongAlgorithm
        ));
        assert!(matches!(
            s.find("e1", Algorithm::RS256),
            Lookup::WrongAlgorithm
        ));
        assert!(matches!(s.find("zz", Algorithm::RS256), Lookup::Unknown));
    }

    #[test]
    fn keys_that_do_not_fit_are_skipped() {
        let s = set(&[
            rsa("keep", ""),
            rsa("enc", r#","use":"enc""#),
            rsa("ops", r#","key_ops":["encrypt"]"#),
            rsa("ps", r#","alg":"PS256""#),
            rsa("rs512", r#","alg":"RS512""#),
            ec("es384", r#","alg":"ES384""#),
            format!(r#"{{"kty":"EC","crv":"P-384","kid":"p384","x":"{EC_X}","y":"{EC_Y}"}}"#),
            r#"{"kty":"oct","kid":"hmac","k":"c2VjcmV0"}"#.into(),
            r#"{"kty":"OKP","crv":"Ed25519","kid":"ed","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#.into(),
            format!(r#"{{"kty":"RSA","n":"{}","e":"AQAB"}}"#, modulus(256)),
            format!(r#"{{"kty":"RSA","kid":"short","n":"{}","e":"AQAB"}}"#, modulus(128)),
            r#"{"kty":"RSA","kid":"no-n","e":"AQAB"}"#.into(),
            r#""not an object""#.into(),
        ])
        .unwrap();
        assert_eq!(kids(&s), [("keep", Algorithm::RS256)]);
        assert!(matches!(s.find("hmac", Algorithm::HS256), Lookup::Unknown));
    }

    #[test]
    fn a_document_without_usable_keys_is_an_error() {
        assert!(set(&[]).unwrap_err().contains("none of its 0 keys"));
        assert!(set(&[rsa("enc", r#","use":"enc""#)]).is_err());
        assert!(KeySet::parse(b"[]").unwrap_err().contains("not a JWKS"));
        assert!(KeySet::parse(b"{\"keys\":").is_err());
    }

    #[test]
    fn the_http_client_builds_with_ring_and_no_process_provider() {
        // reqwest with `rustls-no-provider` panics here if it goes looking for a process-wide
        // provider; the preconfigured ring config must be enough.
        http_client().unwrap();
        assert!(rustls::crypto::CryptoProvider::get_default().is_none());
    }
}
