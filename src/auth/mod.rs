//! Access control for the FHIR REST API: who is calling ([`Authenticator::authenticate`]), for
//! which tenant, and whether their scopes allow an interaction ([`Principal::require`]).
//!
//! Tokens are the bearer JWTs an authorization server issues to SMART backend services: RS256 or
//! ES256, verified against the server's JWKS (a file or a URL, cached and refreshed: `jwks.rs`),
//! or HS256 with a shared secret when configured for development. Every token must carry the
//! configured `iss`, an `aud` naming this server, an `exp` in the future and, if present, an
//! `nbf` in the past (both within `leeway_secs`), and a claim naming the tenant. Scopes follow
//! SMART v1 and v2 (`scopes.rs`).
//!
//! The algorithm is taken from the token only to pick among the keys configured for it: RS256
//! and ES256 use JWKS keys of exactly that type, HS256 uses only `hs256_secret`. So `alg: none`,
//! HS256 without a secret, and HS256 "signed" with a public key (algorithm confusion) all fail
//! before or at the signature check.
//!
//! With `auth = "none"` every request gets a principal with every scope and no tenant (the
//! listener's default tenant); start-up warns about it.
//!
//! Errors say what is wrong in a sentence fit for the client; tokens and claims are logged at
//! debug level only.

mod error;
mod jwks;
mod scopes;
mod settings;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

pub use error::{AuthError, REALM};
pub use jwks::{UNKNOWN_KID_REFRESH_INTERVAL, error_chain, http_client_builder};
pub use scopes::{Interaction, Scopes};
pub use settings::{AuthMode, AuthSettings, MAX_LEEWAY_SECS, MIN_HS256_SECRET_BYTES, Secret};

use jwks::{JwksCache, Source};

/// Longest `Authorization` token looked at. Real access tokens are a few kilobytes; this only
/// keeps an absurd header from being decoded.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Who is calling, as far as the token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The tenant whose data the caller may see. Always set when authentication is on; `None`
    /// only with `auth = "none"`, meaning the listener's default tenant. Every read and write
    /// must be confined to it: that is what keeps one tenant from seeing another's data.
    pub tenant: Option<String>,
    /// `sub`: for backend services usually the client itself.
    pub subject: Option<String>,
    /// `client_id` (RFC 9068), else `azp`.
    pub client_id: Option<String>,
    pub scopes: Scopes,
}

impl Principal {
    /// The principal of `auth = "none"`: every scope, the default tenant.
    pub fn unrestricted() -> Principal {
        Principal {
            tenant: None,
            subject: None,
            client_id: None,
            scopes: Scopes::all(),
        }
    }

    /// Ok when the scopes allow `interaction` on `resource_type`; otherwise
    /// [`AuthError::InsufficientScope`] naming the narrowest scope that would (answered with 403).
    pub fn require(&self, resource_type: &str, interaction: Interaction) -> Result<(), AuthError> {
        if self.scopes.allows(resource_type, interaction) {
            Ok(())
        } else {
            Err(AuthError::InsufficientScope {
                scope: Scopes::needed(resource_type, interaction),
            })
        }
    }

    /// The tenant to use: the token's, or `default` (the listener's) with `auth = "none"`.
    pub fn tenant_or<'a>(&'a self, default: &'a str) -> &'a str {
        self.tenant.as_deref().unwrap_or(default)
    }
}

/// Checks bearer tokens. Cheap to clone (the key cache is shared).
#[derive(Clone, Debug)]
pub struct Authenticator {
    /// `None` for `auth = "none"`.
    verifier: Option<Arc<Verifier>>,
}

struct Verifier {
    issuer: String,
    audience: String,
    tenant_claim: String,
    leeway_secs: u64,
    hs256: Option<DecodingKey>,
    jwks: Option<Arc<JwksCache>>,
}

/// By hand: `DecodingKey`'s own Debug would print the HS256 secret.
impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("tenant_claim", &self.tenant_claim)
            .field("leeway_secs", &self.leeway_secs)
            .field("hs256", &self.hs256.as_ref().map(|_| "***"))
            .field("jwks", &self.jwks.as_ref().map(|j| j.location()))
            .finish()
    }
}

impl Authenticator {
    /// `auth = "none"`: lets everything through with every scope.
    pub fn disabled() -> Authenticator {
        Authenticator { verifier: None }
    }

    /// Builds the checks of an `[auth]` table, loading the JWKS once (so a wrong path or an
    /// unreachable endpoint stops the start instead of failing every request).
    pub async fn from_settings(settings: &AuthSettings) -> Result<Authenticator, AuthError> {
        settings.validate().map_err(AuthError::Settings)?;
        let refresh_every = Duration::from_secs(settings.jwks_refresh_secs);
        let source = match (&settings.jwks_file, &settings.jwks_url) {
            (Some(path), _) => Some(Source::File(path.clone())),
            (None, Some(url)) => Some(Source::Url {
                client: jwks::http_client().map_err(AuthError::Settings)?,
                url: reqwest::Url::parse(url).map_err(|e| AuthError::Settings(e.to_string()))?,
            }),
            (None, None) => None,
        };
        let jwks = match source {
            Some(source) => Some(Arc::new(JwksCache::load(source, refresh_every).await?)),
            None => None,
        };
        let hs256 = settings
            .hs256_secret
            .as_ref()
            .map(|s| DecodingKey::from_secret(s.expose().as_bytes()));
        if hs256.is_some() {
            tracing::warn!(
                "HS256 bearer tokens are accepted (auth.hs256_secret): for development only."
            );
        }
        Ok(Authenticator {
            verifier: Some(Arc::new(Verifier {
                issuer: settings.issuer.clone(),
                audience: settings.audience.clone(),
                tenant_claim: settings.tenant_claim.clone(),
                leeway_secs: settings.leeway_secs,
                hs256,
                jwks,
            })),
        })
    }

    /// [`Authenticator::disabled`] or [`Authenticator::from_settings`], as the setting says.
    pub async fn from_mode(mode: &AuthMode) -> Result<Authenticator, AuthError> {
        match mode {
            AuthMode::None => Ok(Authenticator::disabled()),
            AuthMode::Bearer(settings) => Authenticator::from_settings(settings).await,
        }
    }

    /// False for `auth = "none"`.
    pub fn is_enabled(&self) -> bool {
        self.verifier.is_some()
    }

    /// Checks the raw `Authorization` header value and says who is calling. With
    /// `auth = "none"` the header is not looked at.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, AuthError> {
        let Some(verifier) = &self.verifier else {
            return Ok(Principal::unrestricted());
        };
        let result = match bearer_token(authorization) {
            Ok(token) => verifier.verify(token).await,
            Err(e) => Err(e),
        };
        if let Err(error) = &result {
            tracing::debug!(%error, "Bearer token refused.");
        }
        result
    }
}

/// The token of an `Authorization: Bearer …` header (RFC 6750 §2.1; the scheme is
/// case-insensitive, RFC 9110 §11.1).
fn bearer_token(authorization: Option<&str>) -> Result<&str, AuthError> {
    let value = authorization.map(str::trim).unwrap_or_default();
    if value.is_empty() {
        return Err(AuthError::MissingToken);
    }
    let (scheme, token) = value
        .split_once(|c: char| c.is_ascii_whitespace())
        .unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::NotBearer);
    }
    let token = token.trim();
    if token.is_empty()
        || token.len() > MAX_TOKEN_BYTES
        || token.contains(|c: char| c.is_ascii_whitespace())
    {
        return Err(AuthError::Malformed);
    }
    Ok(token)
}

/// The JOSE header fields looked at before the signature is checked.
#[derive(Deserialize)]
struct JoseHeader {
    alg: String,
    kid: Option<String>,
    /// Extensions the verifier must understand (RFC 7515 §4.1.11); Ferry understands none.
    crit: Option<Value>,
}

/// Reads the header of a compact JWS: exactly three parts (a five-part JWE is not a signed
/// token).
fn jose_header(token: &str) -> Result<JoseHeader, AuthError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed);
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| AuthError::Malformed)?;
    let header: JoseHeader = serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)?;
    if header.crit.is_some() {
        return Err(AuthError::Malformed);
    }
    Ok(header)
}

impl Verifier {
    async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let header = jose_header(token)?;
        // The only algorithms accepted, each with its own kind of key. Everything else (`none`
        // in any spelling, HS384, PS256, …) is refused here, before any key is chosen.
        let alg = match header.alg.as_str() {
            "RS256" => Algorithm::RS256,
            "ES256" => Algorithm::ES256,
            "HS256" => Algorithm::HS256,
            _ => return Err(AuthError::Algorithm),
        };
        let key = match alg {
            // Only the configured secret, never a JWKS key: HS256 "signed" with a public key
            // must not verify.
            Algorithm::HS256 => self.hs256.clone().ok_or(AuthError::Algorithm)?,
            _ => {
                let jwks = self.jwks.as_ref().ok_or(AuthError::Algorithm)?;
                let kid = header.kid.as_deref().ok_or(AuthError::UnknownKey)?;
                jwks.key(kid, alg).await?
            }
        };
        let mut validation = Validation::new(alg);
        validation.algorithms = vec![alg];
        validation.leeway = self.leeway_secs;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation)
            .map_err(|e| jwt_error(&e))?
            .claims;
        self.principal(&claims)
    }

    fn principal(&self, claims: &Map<String, Value>) -> Result<Principal, AuthError> {
        // Taken as issued, not trimmed: the tenant is matched exactly against stored data.
        let text = |name: &str| {
            claims
                .get(name)
                .and_then(Value::as_str)
                .filter(|s| !s.trim().is_empty())
                .map(str::to_owned)
        };
        let tenant = text(&self.tenant_claim).ok_or(AuthError::MissingTenant)?;
        let scopes = match claims.get("scope") {
            Some(Value::String(s)) => Scopes::parse(s),
            // Some servers send a list; same meaning.
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
            _ => Scopes::default(),
        };
        let principal = Principal {
            tenant: Some(tenant),
            subject: text("sub"),
            client_id: text("client_id").or_else(|| text("azp")),
            scopes,
        };
        tracing::debug!(
            tenant = principal.tenant.as_deref(),
            subject = principal.subject.as_deref(),
            client_id = principal.client_id.as_deref(),
            scopes = %principal.scopes,
            "Bearer token accepted."
        );
        Ok(principal)
    }
}

/// jsonwebtoken's verdict, as Ferry's.
fn jwt_error(error: &jsonwebtoken::errors::Error) -> AuthError {
    match error.kind() {
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidKeyFormat => AuthError::BadSignature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::MissingRequiredClaim(claim) => AuthError::MissingClaim(match claim.as_str() {
            "exp" => "exp",
            "iss" => "iss",
            "aud" => "aud",
            _ => "(unknown)",
        }),
        ErrorKind::InvalidAlgorithm | ErrorKind::UnsupportedAlgorithm => AuthError::Algorithm,
        _ => AuthError::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_needs_a_token() {
        assert_eq!(bearer_token(Some("Bearer abc")), Ok("abc"));
        assert_eq!(bearer_token(Some("bearer  abc ")), Ok("abc"));
        assert_eq!(bearer_token(Some("BEARER\tabc")), Ok("abc"));
        assert_eq!(bearer_token(None), Err(AuthError::MissingToken));
        assert_eq!(bearer_token(Some("  ")), Err(AuthError::MissingToken));
        assert_eq!(bearer_token(Some("Basic dTpw")), Err(AuthError::NotBearer));
        assert_eq!(bearer_token(Some("Bearerabc")), Err(AuthError::NotBearer));
        assert_eq!(bearer_token(Some("Bearer")), Err(AuthError::Malformed));
        assert_eq!(bearer_token(Some("Bearer a b")), Err(AuthError::Malformed));
        let long = format!("Bearer {}", "a".repeat(MAX_TOKEN_BYTES + 1));
        assert_eq!(bearer_token(Some(&long)), Err(AuthError::Malformed));
    }

    fn b64(json: &str) -> String {
        URL_SAFE_NO_PAD.encode(json)
    }

    #[test]
    fn only_compact_jws_headers_without_crit_are_read() {
        let h = b64(r#"{"alg":"RS256","kid":"k"}"#);
        let header = jose_header(&format!("{h}.e30.sig")).unwrap();
        assert_eq!(
            (header.alg.as_str(), header.kid.as_deref()),
            ("RS256", Some("k"))
        );
        assert!(jose_header(&format!("{h}.e30")).is_err());
        assert!(jose_header(&format!("{h}.e30.sig.x.y")).is_err());
        assert!(jose_header("!!!.e30.sig").is_err());
        assert!(jose_header(&format!("{}.e30.sig", b64("[]"))).is_err());
        let crit = b64(r#"{"alg":"RS256","kid":"k","crit":["exp"],"exp":1}"#);
        assert_eq!(
            jose_header(&format!("{crit}.e30.sig")).err(),
            Some(AuthError::Malformed)
        );
    }

    #[tokio::test]
    async fn disabled_lets_everything_through_without_a_tenant() {
        let auth = Authenticator::disabled();
        assert!(!auth.is_enabled());
        for header in [None, Some("garbage"), Some("Bearer x.y.z")] {
            let p = auth.authenticate(header).await.unwrap();
            assert_eq!(p, Principal::unrestricted());
            assert_eq!(p.tenant_or("default"), "default");
            p.require("Patient", Interaction::Delete).unwrap();
        }
    }

    #[test]
    fn require_names_the_missing_scope() {
        let p = Principal {
            tenant: Some("t".into()),
            subject: None,
            client_id: None,
            scopes: Scopes::parse("system/Patient.rs"),
        };
        p.require("Patient", Interaction::SearchType).unwrap();
        assert_eq!(p.tenant_or("default"), "t");
        assert_eq!(
            p.require("Patient", Interaction::Update),
            Err(AuthError::InsufficientScope {
                scope: "system/Patient.u".into()
            })
        );
        assert_eq!(
            p.require("Observation", Interaction::Read),
            Err(AuthError::InsufficientScope {
                scope: "system/Observation.r".into()
            })
        );
    }

    #[tokio::test]
    async fn unvalidated_settings_are_refused() {
        let settings = AuthSettings {
            issuer: "https://auth.example".into(),
            audience: "https://ferry.example/fhir".into(),
            jwks_file: None,
            jwks_url: None,
            jwks_refresh_secs: 300,
            hs256_secret: Some(Secret::new("short")),
            tenant_claim: "tenant".into(),
            leeway_secs: 30,
        };
        let err = Authenticator::from_settings(&settings).await.unwrap_err();
        assert!(matches!(err, AuthError::Settings(_)), "{err:?}");
    }

    #[test]
    fn debug_never_shows_the_hs256_secret() {
        let v = Verifier {
            issuer: "i".into(),
            audience: "a".into(),
            tenant_claim: "tenant".into(),
            leeway_secs: 0,
            hs256: Some(DecodingKey::from_secret(
                b"super-secret-value-0123456789abcdef",
            )),
            jwks: None,
        };
        let debug = format!("{v:?}");
        assert!(!debug.contains("super-secret"), "{debug}");
        // Nor as bytes.
        assert!(!debug.contains("115, 117, 112"), "{debug}");
    }
}
