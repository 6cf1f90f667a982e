//! Access control, attacked: bearer tokens signed with the test keys of `tests/keys/` (RSA and EC
//! P-256), checked against a JWKS from a file and from a URL served on 127.0.0.1, with every
//! forgery we could think of. Each test names the check it pins down; removing that check makes
//! it fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use ferry::auth::{AuthError, AuthSettings, Authenticator, Interaction, Principal, Secret};

const ISSUER: &str = "https://auth.example";
const AUDIENCE: &str = "https://ferry.example/fhir";
const HS256_SECRET: &str = "development-only-secret-0123456789";

fn key_bytes(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/keys")
            .join(name),
    )
    .unwrap()
}

/// A signing key of the test authorization server (or of an attacker).
struct Signer {
    kid: String,
    alg: Algorithm,
    key: EncodingKey,
}

fn rsa(kid: &str, file: &str) -> Signer {
    Signer {
        kid: kid.into(),
        alg: Algorithm::RS256,
        key: EncodingKey::from_rsa_pem(&key_bytes(file)).unwrap(),
    }
}

fn rsa1() -> Signer {
    rsa("rsa-1", "rsa-1.pem")
}

fn rsa2() -> Signer {
    rsa("rsa-2", "rsa-2.pem")
}

fn ec1() -> Signer {
    Signer {
        kid: "ec-1".into(),
        alg: Algorithm::ES256,
        key: EncodingKey::from_ec_pem(&key_bytes("ec-1.pem")).unwrap(),
    }
}

/// A key the authorization server never published.
fn attacker(kid: &str) -> Signer {
    rsa(kid, "rsa-attacker.pem")
}

/// The public JWKS of `signers`.
fn jwks(signers: &[&Signer]) -> String {
    let keys: Vec<Value> = signers
        .iter()
        .map(|s| {
            let mut jwk =
                serde_json::to_value(Jwk::from_encoding_key(&s.key, s.alg).unwrap()).unwrap();
            jwk["kid"] = json!(&s.kid);
            jwk["use"] = json!("sig");
            jwk
        })
        .collect();
    json!({ "keys": keys }).to_string()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The claims of a good token: tenant st-mary, read access to Patient and Observation.
fn claims() -> Value {
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "lab-system",
        "client_id": "lab-system",
        "tenant": "st-mary",
        "scope": "system/Patient.rs system/Observation.read openid",
        "iat": now(),
        "exp": now() + 300,
        "jti": "t-1",
    })
}

fn claims_with(changes: Value) -> Value {
    let mut c = claims();
    for (k, v) in changes.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

fn sign(signer: &Signer, claims: &Value) -> String {
    let mut header = Header::new(signer.alg);
    header.kid = Some(signer.kid.clone());
    jsonwebtoken::encode(&header, claims, &signer.key).unwrap()
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A token put together by hand: any header, any claims, any signature.
fn forge(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        b64(header.to_string()),
        b64(claims.to_string())
    )
}

/// The three parts of a token.
fn parts(token: &str) -> (String, String, String) {
    let mut p = token.split('.').map(str::to_owned);
    (p.next().unwrap(), p.next().unwrap(), p.next().unwrap())
}

fn settings() -> AuthSettings {
    AuthSettings {
        issuer: ISSUER.into(),
        audience: AUDIENCE.into(),
        jwks_file: None,
        jwks_url: None,
        jwks_refresh_secs: 300,
        hs256_secret: None,
        tenant_claim: "tenant".into(),
        leeway_secs: 30,
    }
}

/// An authenticator reading `jwks` from a file in a fresh folder, after `adjust`.
async fn from_file_with(
    jwks_text: &str,
    adjust: impl FnOnce(&mut AuthSettings),
) -> (tempfile::TempDir, PathBuf, Authenticator) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks_text).unwrap();
    let mut s = settings();
    s.jwks_file = Some(path.clone());
    adjust(&mut s);
    let auth = Authenticator::from_settings(&s).await.unwrap();
    (dir, path, auth)
}

/// The usual server: rsa-1 and ec-1 published in a file.
async fn standard() -> (tempfile::TempDir, Authenticator) {
    let (dir, _, auth) = from_file_with(&jwks(&[&rsa1(), &ec1()]), |_| {}).await;
    (dir, auth)
}

async fn check(auth: &Authenticator, token: &str) -> Result<Principal, AuthError> {
    auth.authenticate(Some(&format!("Bearer {token}"))).await
}

/// Asserts a refusal: the error, a 401 and an `invalid_token` challenge.
async fn refused(auth: &Authenticator, token: &str, expected: AuthError) {
    let err = check(auth, token).await.unwrap_err();
    assert_eq!(err, expected);
    assert_eq!(err.status(), StatusCode::UNAUTHORIZED);
    let challenge = err.www_authenticate().unwrap();
    assert!(
        challenge.starts_with("Bearer realm=\"ferry\", error=\"invalid_token\""),
        "{challenge}"
    );
    // Nothing of the token goes back to the client.
    for text in [err.to_string(), challenge] {
        for part in token.split('.').filter(|p| p.len() >= 8) {
            assert!(!text.contains(part), "{text}");
        }
        assert!(!text.contains("st-mary") && !text.contains("lab-system"));
    }
}

// ---------------------------------------------------------------------------------------------
// Tokens that must pass.

#[tokio::test]
async fn a_good_rs256_token_gives_its_tenant_subject_client_and_scopes() {
    let (_dir, auth) = standard().await;
    assert!(auth.is_enabled());
    let p = check(&auth, &sign(&rsa1(), &claims())).await.unwrap();
    assert_eq!(p.tenant.as_deref(), Some("st-mary"));
    assert_eq!(p.tenant_or("default"), "st-mary");
    assert_eq!(p.subject.as_deref(), Some("lab-system"));
    assert_eq!(p.client_id.as_deref(), Some("lab-system"));
    p.require("Patient", Interaction::Read).unwrap();
    p.require("Patient", Interaction::SearchType).unwrap();
    p.require("Observation", Interaction::HistoryInstance)
        .unwrap();
}

#[tokio::test]
async fn a_good_es256_token_passes() {
    let (_dir, auth) = standard().await;
    let p = check(&auth, &sign(&ec1(), &claims())).await.unwrap();
    assert_eq!(p.tenant.as_deref(), Some("st-mary"));
}

#[tokio::test]
async fn the_audience_may_be_a_list_and_scopes_an_array() {
    let (_dir, auth) = standard().await;
    let c = claims_with(json!({
        "aud": ["https://other.example", AUDIENCE],
        "scope": ["system/Encounter.c"],
        "client_id": null,
        "azp": "azp-client",
    }));
    let p = check(&auth, &sign(&rsa1(), &c)).await.unwrap();
    p.require("Encounter", Interaction::Create).unwrap();
    assert_eq!(p.client_id.as_deref(), Some("azp-client"));
}

#[tokio::test]
async fn clock_skew_within_the_leeway_is_tolerated() {
    let (_dir, auth) = standard().await;
    let c = claims_with(json!({ "exp": now() - 10, "nbf": now() + 10 }));
    check(&auth, &sign(&rsa1(), &c)).await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// No token, or not a bearer token.

#[tokio::test]
async fn no_header_is_401_with_a_bare_challenge() {
    let (_dir, auth) = standard().await;
    for header in [
        None,
        Some(""),
        Some("Basic dXNlcjpwYXNz"),
        Some("Token abc"),
    ] {
        let err = auth.authenticate(header).await.unwrap_err();
        assert!(
            matches!(err, AuthError::MissingToken | AuthError::NotBearer),
            "{header:?}: {err:?}"
        );
        assert_eq!(err.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(err.www_authenticate().unwrap(), "Bearer realm=\"ferry\"");
    }
}

#[tokio::test]
async fn garbage_is_malformed() {
    let (_dir, auth) = standard().await;
    let good = sign(&rsa1(), &claims());
    let (h, p, s) = parts(&good);
    for token in [
        "abc".to_owned(),
        "a.b.c".to_owned(),
        format!("{h}.{p}"),
        format!("{h}.{p}.{s}.{s}.{s}"),
        format!("{h}.!!!.{s}"),
        format!("{h}.{}.{s}", b64("not json")),
    ] {
        let err = check(&auth, &token).await.unwrap_err();
        assert!(
            matches!(err, AuthError::Malformed | AuthError::BadSignature),
            "{token}: {err:?}"
        );
        assert_eq!(err.status(), StatusCode::UNAUTHORIZED);
    }
}

// ---------------------------------------------------------------------------------------------
// Time.

#[tokio::test]
async fn an_expired_token_is_refused() {
    let (_dir, auth) = standard().await;
    let c = claims_with(json!({ "iat": now() - 3600, "exp": now() - 120 }));
    refused(&auth, &sign(&rsa1(), &c), AuthError::Expired).await;
}

#[tokio::test]
async fn a_token_without_exp_is_refused() {
    let (_dir, auth) = standard().await;
    let c = claims_with(json!({ "exp": null }));
    refused(&auth, &sign(&rsa1(), &c), AuthError::MissingClaim("exp")).await;
}

#[tokio::test]
async fn a_token_not_valid_yet_is_refused() {
    let (_dir, auth) = standard().await;
    let c = claims_with(json!({ "nbf": now() + 3600, "exp": now() + 7200 }));
    refused(&auth, &sign(&rsa1(), &c), AuthError::NotYetValid).await;
}

// ---------------------------------------------------------------------------------------------
// Issuer and audience.

#[tokio::test]
async fn a_token_for_another_audience_is_refused() {
    let (_dir, auth) = standard().await;
    for aud in [
        json!("https://other.example/fhir"),
        json!(["https://other.example/fhir"]),
        json!(format!("{AUDIENCE}/")),
    ] {
        let c = claims_with(json!({ "aud": aud }));
        refused(&auth, &sign(&rsa1(), &c), AuthError::WrongAudience).await;
    }
    let c = claims_with(json!({ "aud": null }));
    refused(&auth, &sign(&rsa1(), &c), AuthError::MissingClaim("aud")).await;
}

#[tokio::test]
async fn a_token_from_another_issuer_is_refused() {
    let (_dir, auth) = standard().await;
    for iss in [
        "https://evil.example",
        "https://auth.example/",
        "HTTPS://AUTH.EXAMPLE",
    ] {
        let c = claims_with(json!({ "iss": iss }));
        refused(&auth, &sign(&rsa1(), &c), AuthError::WrongIssuer).await;
    }
    let c = claims_with(json!({ "iss": null }));
    refused(&auth, &sign(&rsa1(), &c), AuthError::MissingClaim("iss")).await;
}

// ---------------------------------------------------------------------------------------------
// Scopes.

#[tokio::test]
async fn a_missing_scope_is_403_naming_the_scope() {
    let (_dir, auth) = standard().await;
    let p = check(&auth, &sign(&rsa1(), &claims())).await.unwrap();
    for (resource, interaction, scope) in [
        ("Patient", Interaction::Create, "system/Patient.c"),
        ("Patient", Interaction::Update, "system/Patient.u"),
        ("Patient", Interaction::Delete, "system/Patient.d"),
        ("Encounter", Interaction::Read, "system/Encounter.r"),
        ("Observation", Interaction::Delete, "system/Observation.d"),
    ] {
        let err = p.require(resource, interaction).unwrap_err();
        assert_eq!(
            err,
            AuthError::InsufficientScope {
                scope: scope.into()
            }
        );
        assert_eq!(err.status(), StatusCode::FORBIDDEN);
        let challenge = err.www_authenticate().unwrap();
        assert!(
            challenge.contains("error=\"insufficient_scope\"")
                && challenge.contains(&format!("scope=\"{scope}\"")),
            "{challenge}"
        );
    }
}

#[tokio::test]
async fn patient_and_constrained_scopes_grant_nothing() {
    let (_dir, auth) = standard().await;
    let c = claims_with(json!({
        "scope": "patient/*.cruds system/Observation.rs?category=laboratory launch/patient"
    }));
    let p = check(&auth, &sign(&rsa1(), &c)).await.unwrap();
    assert!(p.scopes.is_empty(), "{:?}", p.scopes);
    assert!(p.require("Observation", Interaction::SearchType).is_err());
    assert!(p.require("Patient", Interaction::Read).is_err());
}

#[tokio::test]
async fn a_token_without_scopes_may_do_nothing() {
    let (_dir, auth) = standard().await;
    let c = claims_with(json!({ "scope": null }));
    let p = check(&auth, &sign(&rsa1(), &c)).await.unwrap();
    assert!(p.require("Patient", Interaction::Read).is_err());
}

// ---------------------------------------------------------------------------------------------
// Algorithms.

#[tokio::test]
async fn alg_none_is_refused_in_every_spelling() {
    let (_dir, auth) = standard().await;
    let (_, _, real_signature) = parts(&sign(&rsa1(), &claims()));
    for alg in ["none", "None", "NONE", "nOnE", ""] {
        for signature in ["", real_signature.as_str()] {
            let token = forge(
                &json!({ "alg": alg, "kid": "rsa-1", "typ": "JWT" }),
                &claims(),
                signature,
            );
            refused(&auth, &token, AuthError::Algorithm).await;
        }
    }
    let no_alg = forge(&json!({ "kid": "rsa-1" }), &claims(), "");
    refused(&auth, &no_alg, AuthError::Malformed).await;
}

#[tokio::test]
async fn hs256_is_refused_when_no_secret_is_configured() {
    let (_dir, auth) = standard().await;
    let public_pem = key_bytes("rsa-1.pub.pem");
    for secret in [public_pem.as_slice(), HS256_SECRET.as_bytes()] {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("rsa-1".into());
        let token =
            jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_secret(secret)).unwrap();
        refused(&auth, &token, AuthError::Algorithm).await;
    }
}

#[tokio::test]
async fn hs256_signed_with_the_public_key_is_refused_even_with_hs256_on() {
    // Algorithm confusion: a verifier that took the JWKS key as the HMAC secret would accept
    // this. Ferry's HS256 key is only the configured secret.
    let (_dir, _, auth) = from_file_with(&jwks(&[&rsa1()]), |s| {
        s.hs256_secret = Some(Secret::new(HS256_SECRET));
    })
    .await;
    let pem = key_bytes("rsa-1.pub.pem");
    let jwk = serde_json::to_value(Jwk::from_encoding_key(&rsa1().key, Algorithm::RS256).unwrap())
        .unwrap();
    let n = jwk["n"].as_str().unwrap().to_owned();
    for secret in [pem.as_slice(), n.as_bytes()] {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("rsa-1".into());
        let token =
            jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_secret(secret)).unwrap();
        refused(&auth, &token, AuthError::BadSignature).await;
    }
    // The configured secret itself works (development mode).
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(HS256_SECRET.as_bytes()),
    )
    .unwrap();
    let p = check(&auth, &token).await.unwrap();
    assert_eq!(p.tenant.as_deref(), Some("st-mary"));
}

#[tokio::test]
async fn hs256_only_servers_refuse_rs256() {
    let mut s = settings();
    s.hs256_secret = Some(Secret::new(HS256_SECRET));
    let auth = Authenticator::from_settings(&s).await.unwrap();
    refused(&auth, &sign(&rsa1(), &claims()), AuthError::Algorithm).await;
}

#[tokio::test]
async fn a_key_is_used_only_for_its_own_algorithm() {
    let (_dir, auth) = standard().await;
    // An ES256 signature relabelled RS256 with the EC key's kid, and the other way round.
    let (_, payload, es_sig) = parts(&sign(&ec1(), &claims()));
    let rs_header = b64(json!({ "alg": "RS256", "kid": "ec-1" }).to_string());
    refused(
        &auth,
        &format!("{rs_header}.{payload}.{es_sig}"),
        AuthError::Algorithm,
    )
    .await;
    let (_, payload, rs_sig) = parts(&sign(&rsa1(), &claims()));
    let es_header = b64(json!({ "alg": "ES256", "kid": "rsa-1" }).to_string());
    refused(
        &auth,
        &format!("{es_header}.{payload}.{rs_sig}"),
        AuthError::Algorithm,
    )
    .await;
}

#[tokio::test]
async fn algorithms_other_than_rs256_es256_hs256_are_refused() {
    let (_dir, auth) = standard().await;
    for alg in [Algorithm::RS512, Algorithm::PS256, Algorithm::RS384] {
        let signer = Signer { alg, ..rsa1() };
        refused(&auth, &sign(&signer, &claims()), AuthError::Algorithm).await;
    }
}

#[tokio::test]
async fn critical_header_extensions_are_refused() {
    // Properly signed, but with an extension Ferry would have to understand (RFC 7515 §4.1.11).
    let (_dir, auth) = standard().await;
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rsa-1".into());
    header.crit = Some(vec!["b64".into()]);
    header.extras.insert("b64", false);
    let token = jsonwebtoken::encode(&header, &claims(), &rsa1().key).unwrap();
    refused(&auth, &token, AuthError::Malformed).await;
}

#[tokio::test]
async fn keys_offered_inside_the_token_are_ignored() {
    // `jwk` and `jku` headers let a token bring its own key; only the configured JWKS counts.
    let (_dir, auth) = standard().await;
    let evil = attacker("evil");
    let evil_jwk = Jwk::from_encoding_key(&evil.key, Algorithm::RS256).unwrap();
    for kid in ["evil", "rsa-1"] {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid.into());
        header.jwk = Some(evil_jwk.clone());
        header.jku = Some("https://evil.example/jwks".into());
        let token = jsonwebtoken::encode(&header, &claims(), &evil.key).unwrap();
        let expected = if kid == "evil" {
            AuthError::UnknownKey
        } else {
            AuthError::BadSignature
        };
        refused(&auth, &token, expected).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Keys and signatures.

#[tokio::test]
async fn an_unknown_kid_is_refused() {
    let (_dir, auth) = standard().await;
    refused(
        &auth,
        &sign(&attacker("attacker"), &claims()),
        AuthError::UnknownKey,
    )
    .await;
    let no_kid =
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims(), &rsa1().key).unwrap();
    refused(&auth, &no_kid, AuthError::UnknownKey).await;
}

#[tokio::test]
async fn a_foreign_key_under_a_known_kid_is_a_bad_signature() {
    let (_dir, auth) = standard().await;
    refused(
        &auth,
        &sign(&attacker("rsa-1"), &claims()),
        AuthError::BadSignature,
    )
    .await;
}

#[tokio::test]
async fn a_tampered_signature_is_refused() {
    let (_dir, auth) = standard().await;
    for signer in [rsa1(), ec1()] {
        let (h, p, s) = parts(&sign(&signer, &claims()));
        let mut bytes = URL_SAFE_NO_PAD.decode(&s).unwrap();
        bytes[10] ^= 0x01;
        refused(
            &auth,
            &format!("{h}.{p}.{}", b64(&bytes)),
            AuthError::BadSignature,
        )
        .await;
    }
}

#[tokio::test]
async fn tampered_claims_are_refused() {
    // Raising one's scopes or switching tenant after signing.
    let (_dir, auth) = standard().await;
    let (h, _, s) = parts(&sign(&rsa1(), &claims()));
    for changes in [
        json!({ "scope": "system/*.cruds" }),
        json!({ "tenant": "st-elsewhere" }),
    ] {
        let forged_payload = b64(claims_with(changes).to_string());
        refused(
            &auth,
            &format!("{h}.{forged_payload}.{s}"),
            AuthError::BadSignature,
        )
        .await;
    }
}

// ---------------------------------------------------------------------------------------------
// Tenant.

#[tokio::test]
async fn a_token_without_a_tenant_is_refused() {
    let (_dir, auth) = standard().await;
    for tenant in [
        Value::Null,
        json!(""),
        json!("  "),
        json!(42),
        json!(["st-mary"]),
    ] {
        let c = claims_with(json!({ "tenant": tenant }));
        refused(&auth, &sign(&rsa1(), &c), AuthError::MissingTenant).await;
    }
}

#[tokio::test]
async fn the_tenant_comes_from_the_configured_claim_only() {
    let claim = "https://ferry.example/tenant";
    let (_dir, _, auth) = from_file_with(&jwks(&[&rsa1()]), |s| {
        s.tenant_claim = claim.into();
    })
    .await;
    // The default claim name means nothing here.
    refused(&auth, &sign(&rsa1(), &claims()), AuthError::MissingTenant).await;
    let c = claims_with(json!({ claim: "st-john", "tenant": "st-mary" }));
    let p = check(&auth, &sign(&rsa1(), &c)).await.unwrap();
    assert_eq!(p.tenant.as_deref(), Some("st-john"));
}

// ---------------------------------------------------------------------------------------------
// The JWKS file.

#[tokio::test]
async fn a_rewritten_jwks_file_is_picked_up_on_an_unknown_kid() {
    let (_dir, path, auth) = from_file_with(&jwks(&[&rsa1()]), |_| {}).await;
    std::fs::write(&path, jwks(&[&rsa2()])).unwrap();
    let p = check(&auth, &sign(&rsa2(), &claims())).await.unwrap();
    assert_eq!(p.tenant.as_deref(), Some("st-mary"));
    // rsa-1 is gone from the set now.
    refused(&auth, &sign(&rsa1(), &claims()), AuthError::UnknownKey).await;
}

#[tokio::test]
async fn a_missing_or_unusable_jwks_file_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (None, "No such file"),
        (Some("{\"keys\": ["), "not a JWKS"),
        (
            Some(r#"{"keys":[{"kty":"oct","kid":"h","k":"c2VjcmV0"}]}"#),
            "none of its 1 keys",
        ),
    ];
    for (content, expected) in cases {
        let path = dir.path().join("jwks.json");
        let _ = std::fs::remove_file(&path);
        if let Some(text) = content {
            std::fs::write(&path, text).unwrap();
        }
        let mut s = settings();
        s.jwks_file = Some(path.clone());
        let err = Authenticator::from_settings(&s).await.unwrap_err();
        assert!(matches!(err, AuthError::Keys { .. }), "{err:?}");
        assert!(err.to_string().contains(expected), "{err}");
    }
}

// ---------------------------------------------------------------------------------------------
// The JWKS URL: a small authorization server on 127.0.0.1.

#[derive(Clone, Default)]
struct IdpState {
    jwks: Arc<Mutex<String>>,
    fetches: Arc<AtomicUsize>,
    broken: Arc<Mutex<bool>>,
}

struct Idp {
    state: IdpState,
    addr: SocketAddr,
}

impl Idp {
    async fn start(jwks_text: String) -> Idp {
        let state = IdpState::default();
        *state.jwks.lock().unwrap() = jwks_text;
        let app = Router::new()
            .route(
                "/jwks",
                get(|State(s): State<IdpState>| async move {
                    s.fetches.fetch_add(1, Ordering::SeqCst);
                    if *s.broken.lock().unwrap() {
                        return Err(StatusCode::INTERNAL_SERVER_ERROR);
                    }
                    Ok(s.jwks.lock().unwrap().clone())
                }),
            )
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Idp { state, addr }
    }

    fn url(&self) -> String {
        format!("http://{}/jwks", self.addr)
    }

    fn publish(&self, jwks_text: String) {
        *self.state.jwks.lock().unwrap() = jwks_text;
    }

    fn fetches(&self) -> usize {
        self.state.fetches.load(Ordering::SeqCst)
    }

    fn set_broken(&self, broken: bool) {
        *self.state.broken.lock().unwrap() = broken;
    }

    async fn authenticator(&self, refresh_secs: u64) -> Authenticator {
        let mut s = settings();
        s.jwks_url = Some(self.url());
        s.jwks_refresh_secs = refresh_secs;
        Authenticator::from_settings(&s).await.unwrap()
    }
}

#[tokio::test]
async fn the_jwks_is_fetched_from_the_url_once_and_cached() {
    let idp = Idp::start(jwks(&[&rsa1(), &ec1()])).await;
    let auth = idp.authenticator(300).await;
    assert_eq!(idp.fetches(), 1);
    for _ in 0..5 {
        check(&auth, &sign(&rsa1(), &claims())).await.unwrap();
        check(&auth, &sign(&ec1(), &claims())).await.unwrap();
    }
    assert_eq!(idp.fetches(), 1, "known keys need no fetch");
}

#[tokio::test]
async fn key_rotation_is_picked_up_on_an_unknown_kid_at_most_every_30_seconds() {
    let idp = Idp::start(jwks(&[&rsa1()])).await;
    let auth = idp.authenticator(300).await;
    // The server rotates to rsa-2; the first token signed with it makes Ferry fetch again.
    idp.publish(jwks(&[&rsa2()]));
    check(&auth, &sign(&rsa2(), &claims())).await.unwrap();
    assert_eq!(idp.fetches(), 2);
    // rsa-1 is gone, and a second rotation right after is not fetched: the unknown-kid refresh
    // was used less than 30 s ago.
    refused(&auth, &sign(&rsa1(), &claims()), AuthError::UnknownKey).await;
    idp.publish(jwks(&[&rsa2(), &ec1()]));
    refused(&auth, &sign(&ec1(), &claims()), AuthError::UnknownKey).await;
    assert_eq!(idp.fetches(), 2);
}

#[tokio::test]
async fn a_flood_of_made_up_kids_fetches_the_jwks_once() {
    let idp = Idp::start(jwks(&[&rsa1()])).await;
    let auth = idp.authenticator(300).await;
    // One after the other (each would be allowed its own refresh without the rate limit)...
    for i in 0..20 {
        let token = sign(&attacker(&format!("one-by-one-{i}")), &claims());
        refused(&auth, &token, AuthError::UnknownKey).await;
    }
    // ...and all at once.
    let checks = (0..20).map(|i| {
        let token = sign(&attacker(&format!("all-at-once-{i}")), &claims());
        let auth = auth.clone();
        async move { auth.authenticate(Some(&format!("Bearer {token}"))).await }
    });
    for result in futures::future::join_all(checks).await {
        assert_eq!(result.unwrap_err(), AuthError::UnknownKey);
    }
    assert_eq!(idp.fetches(), 2, "one start-up fetch and one refresh");
    // Good tokens are unaffected.
    check(&auth, &sign(&rsa1(), &claims())).await.unwrap();
}

#[tokio::test]
async fn the_jwks_is_refreshed_periodically_and_dropped_keys_stop_working() {
    let idp = Idp::start(jwks(&[&rsa1()])).await;
    let auth = idp.authenticator(1).await;
    idp.publish(jwks(&[&rsa2()]));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // The set is stale: this request is answered from the cached keys and starts a refresh in
    // the background.
    check(&auth, &sign(&rsa1(), &claims())).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while idp.fetches() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no periodic refresh"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let the refresh land, then: rsa-2 known without another fetch, rsa-1 gone.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if check(&auth, &sign(&rsa2(), &claims())).await.is_ok() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "refresh never landed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        check(&auth, &sign(&rsa1(), &claims())).await.unwrap_err(),
        AuthError::UnknownKey
    );
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_keys_already_loaded() {
    let idp = Idp::start(jwks(&[&rsa1()])).await;
    let auth = idp.authenticator(300).await;
    idp.set_broken(true);
    refused(&auth, &sign(&rsa2(), &claims()), AuthError::UnknownKey).await;
    assert_eq!(idp.fetches(), 2);
    check(&auth, &sign(&rsa1(), &claims())).await.unwrap();
}

#[tokio::test]
async fn an_unreachable_or_failing_jwks_url_stops_the_start() {
    let idp = Idp::start(jwks(&[&rsa1()])).await;
    idp.set_broken(true);
    let mut s = settings();
    s.jwks_url = Some(idp.url());
    let err = Authenticator::from_settings(&s).await.unwrap_err();
    assert!(err.to_string().contains("HTTP status 500"), "{err}");
    assert_eq!(err.status(), StatusCode::SERVICE_UNAVAILABLE);

    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    s.jwks_url = Some(format!("http://{addr}/jwks"));
    let err = Authenticator::from_settings(&s).await.unwrap_err();
    assert!(matches!(err, AuthError::Keys { .. }), "{err:?}");
}

#[tokio::test]
async fn a_plain_http_jwks_url_off_loopback_is_refused() {
    let mut s = settings();
    s.jwks_url = Some("http://auth.example/jwks".into());
    let err = Authenticator::from_settings(&s).await.unwrap_err();
    assert!(matches!(err, AuthError::Settings(_)), "{err:?}");
}

// ---------------------------------------------------------------------------------------------
// `ferry serve`: auth off only when said, and then with a warning.

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

/// Starts `ferry serve`, waits for its listening lines, stops it and returns its log.
fn serve_log(dir: &Path, config: Option<&Path>) -> String {
    let mut cmd = Command::new(FERRY);
    cmd.arg("serve");
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    let mut child = cmd
        .env("FERRY_MLLP_LISTEN", "127.0.0.1:0")
        .env("FERRY_HTTP_LISTEN", "127.0.0.1:0")
        .env(
            "FERRY_DATABASE_URL",
            format!("sqlite://{}/data/ferry.db", dir.display()),
        )
        .env("FERRY_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let second = lines.next().unwrap().unwrap();
    assert!(first.starts_with("ferry: mllp listening on"), "{first}");
    assert!(second.starts_with("ferry: http listening on"), "{second}");
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_embedded_defaults_run_without_auth_and_warn_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = serve_log(dir.path(), None);
    assert_eq!(log.matches("Authentication is off").count(), 1, "{log}");
    assert!(log.contains("WARN"), "{log}");
}

#[test]
fn a_config_file_without_auth_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.toml");
    std::fs::write(&config, "[http]\nlisten = \"127.0.0.1:0\"\n").unwrap();
    let out = Command::new(FERRY)
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`auth = \"none\"`"), "{err}");
    assert!(err.contains("[auth]"), "{err}");
}

#[test]
fn a_config_file_with_an_auth_table_starts_with_its_keys_and_no_warning() {
    let dir = tempfile::tempdir().unwrap();
    let jwks_path = dir.path().join("jwks.json");
    std::fs::write(&jwks_path, jwks(&[&rsa1()])).unwrap();
    let config = dir.path().join("ferry.toml");
    let auth_table = format!(
        "[auth]\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\njwks_file = \"{}\"\n",
        jwks_path.display()
    );
    std::fs::write(&config, &auth_table).unwrap();
    let log = serve_log(dir.path(), Some(&config));
    assert!(!log.contains("Authentication is off"), "{log}");
    assert!(log.contains("Bearer-token authentication on"), "{log}");

    // The same file with the key file gone: the start fails and says why.
    std::fs::remove_file(&jwks_path).unwrap();
    let out = Command::new(FERRY)
        .args(["serve", "--config"])
        .arg(&config)
        .env(
            "FERRY_DATABASE_URL",
            format!("sqlite://{}/data/ferry.db", dir.path().display()),
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("signing keys could not be loaded"), "{err}");
}
