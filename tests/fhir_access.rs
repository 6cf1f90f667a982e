//! Access control of the FHIR API, tried the way an attacker would: two tenants on one Ferry, with
//! the same patient MRN each; tokens of one tenant must never reach the other's data (by id, by
//! search, by history), and bad tokens (none, expired, wrong audience, `alg: none`, missing scope)
//! are refused with 401/403 OperationOutcomes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::http;
use ferry::app::App;
use ferry::auth::{AuthMode, AuthSettings};
use ferry::config::{ListenerSettings, MllpListenerSettings, Settings};
use ferry::mllp::client::MllpClient;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const ISSUER: &str = "https://auth.example";
const AUDIENCE: &str = "https://ferry.example/fhir";
const MARY: &str = "st-mary";
const PAUL: &str = "st-paul";
const TIMEOUT: Duration = Duration::from_secs(20);

fn manifest(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn key() -> EncodingKey {
    EncodingKey::from_rsa_pem(&std::fs::read(manifest("tests/keys/rsa-1.pem")).unwrap()).unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token of the test authorization server for `tenant` with `scope`; `changes` overrides claims
/// (null removes one).
fn token(tenant: &str, scope: &str, changes: Value) -> String {
    let mut claims = json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "ehr", "tenant": tenant, "scope": scope,
        "iat": now(), "exp": now() + 300,
    });
    for (k, v) in changes.as_object().unwrap() {
        if v.is_null() {
            claims.as_object_mut().unwrap().remove(k);
        } else {
            claims[k] = v.clone();
        }
    }
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rsa-1".into());
    jsonwebtoken::encode(&header, &claims, &key()).unwrap()
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn start(dir: &Path) -> App {
    let mut jwk =
        serde_json::to_value(Jwk::from_encoding_key(&key(), Algorithm::RS256).unwrap()).unwrap();
    jwk["kid"] = json!("rsa-1");
    jwk["use"] = json!("sig");
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, json!({ "keys": [jwk] }).to_string()).unwrap();
    let listener = |name: &str, tenant: &str| {
        ListenerSettings::Mllp(MllpListenerSettings {
            name: name.into(),
            listen: "127.0.0.1:0".parse().unwrap(),
            hospital_id: tenant.into(),
            ..MllpListenerSettings::default()
        })
    };
    let mut s = Settings {
        listeners: vec![listener("mary-adt", MARY), listener("paul-adt", PAUL)],
        shutdown_grace_secs: 5,
        ..Settings::default()
    };
    s.store.url = format!("sqlite://{}/ferry.db", dir.display());
    s.http.listen = "127.0.0.1:0".parse().unwrap();
    s.mappings.dir = manifest("mappings");
    s.auth = AuthMode::Bearer(AuthSettings {
        issuer: ISSUER.into(),
        audience: AUDIENCE.into(),
        jwks_file: Some(jwks),
        jwks_url: None,
        jwks_refresh_secs: 300,
        hs256_secret: None,
        tenant_claim: "tenant".into(),
        leeway_secs: 30,
    });
    App::start(&s).await.unwrap()
}

async fn get(app: &App, path: &str, token: Option<&str>) -> common::HttpResponse {
    let auth = token.map(bearer);
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    http(app.http_addr, "GET", path, &headers, b"").await
}

/// The one patient of a tenant's own MRN 100010 search.
async fn own_patient(app: &App, token: &str) -> String {
    let r = get(
        app,
        "/fhir/Patient?identifier=urn:ferry:authority:TEST-HOSP%7C100010",
        Some(token),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let bundle = r.json();
    assert_eq!(bundle["total"], 1, "{bundle}");
    bundle["entry"][0]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn assert_refused(r: &common::HttpResponse, status: u16, issue_code: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    let outcome = r.json();
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert_eq!(outcome["issue"][0]["code"], issue_code, "{outcome}");
    if status == 401 {
        assert!(
            r.header("www-authenticate")
                .is_some_and(|c| c.starts_with("Bearer")),
            "{:?}",
            r.headers
        );
    }
    // Nothing of any patient leaks into an error.
    assert!(!r.body.contains("Brandt"), "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenant_never_sees_another_and_bad_tokens_get_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let app = start(dir.path()).await;
    // The same A01 (same MRN, same visit) on both tenants' listeners.
    let a01 = std::fs::read(manifest("fixtures/hl7v2/adt_a01_basic.hl7")).unwrap();
    for (_, addr) in &app.mllp_addrs {
        let mut client = MllpClient::connect(*addr, TIMEOUT).await.unwrap();
        let ack = String::from_utf8(client.request(&a01).await.unwrap().to_vec()).unwrap();
        assert!(ack.contains("MSA|AA|"), "{ack}");
    }

    let mary = token(MARY, "system/Patient.rs system/Encounter.read", json!({}));
    let paul = token(PAUL, "system/*.read", json!({}));
    let mary_patient = own_patient(&app, &mary).await;
    let paul_patient = own_patient(&app, &paul).await;
    assert_ne!(mary_patient, paul_patient, "tenants share no resource ids");

    // By id: the other tenant's patient does not exist for me (404, not 403: nothing is given
    // away), through read, vread and history alike.
    assert_eq!(
        get(&app, &format!("/fhir/Patient/{mary_patient}"), Some(&mary))
            .await
            .status,
        200
    );
    for path in [
        format!("/fhir/Patient/{paul_patient}"),
        format!("/fhir/Patient/{paul_patient}/_history/1"),
        format!("/fhir/Patient/{paul_patient}/_history"),
    ] {
        let r = get(&app, &path, Some(&mary)).await;
        assert_refused(&r, 404, "not-found");
    }
    assert_refused(
        &get(&app, &format!("/fhir/Patient/{mary_patient}"), Some(&paul)).await,
        404,
        "not-found",
    );

    // By search: no parameter reaches across tenants, not even _id or an empty search.
    for path in [
        format!("/fhir/Patient?_id={paul_patient}"),
        "/fhir/Patient".to_owned(),
        "/fhir/Patient?family=brandt".to_owned(),
        "/fhir/Patient/_history".to_owned(),
        format!("/fhir/Encounter?patient={paul_patient}"),
    ] {
        let r = get(&app, &path, Some(&mary)).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        let bundle = r.json();
        let ids: Vec<&str> = bundle["entry"]
            .as_array()
            .map(|e| {
                e.iter()
                    .filter_map(|e| e["resource"]["id"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        assert!(!ids.contains(&paul_patient.as_str()), "{path}: {bundle}");
        assert!(
            !bundle
                .to_string()
                .contains(&format!("Patient/{paul_patient}")),
            "{path}: {bundle}"
        );
    }
    let all = get(&app, "/fhir/Patient", Some(&mary)).await.json();
    assert_eq!(all["total"], 1);

    // Scopes: Patient.rs allows no Observation, Encounter.read no search (v1 .read is r+s: it
    // does), and no write at all.
    assert_refused(
        &get(&app, "/fhir/Observation", Some(&mary)).await,
        403,
        "forbidden",
    );
    assert_eq!(get(&app, "/fhir/Encounter", Some(&mary)).await.status, 200);
    let read_only = token(MARY, "system/Patient.r", json!({}));
    assert_refused(
        &get(&app, "/fhir/Patient?family=brandt", Some(&read_only)).await,
        403,
        "forbidden",
    );
    assert_eq!(
        get(
            &app,
            &format!("/fhir/Patient/{mary_patient}"),
            Some(&read_only)
        )
        .await
        .status,
        200
    );
    let encounters_only = token(MARY, "system/Encounter.rs", json!({}));
    assert_refused(
        &get(
            &app,
            "/fhir/Encounter?_include=Encounter:subject",
            Some(&encounters_only),
        )
        .await,
        403,
        "forbidden",
    );

    // Bad tokens: 401 with a challenge, whatever the path.
    let path = format!("/fhir/Patient/{mary_patient}");
    assert_refused(&get(&app, &path, None).await, 401, "login");
    let expired = token(
        MARY,
        "system/*.read",
        json!({ "exp": now() - 3600, "iat": now() - 7200 }),
    );
    assert_refused(&get(&app, &path, Some(&expired)).await, 401, "login");
    let elsewhere = token(
        MARY,
        "system/*.read",
        json!({ "aud": "https://other.example/fhir" }),
    );
    assert_refused(&get(&app, &path, Some(&elsewhere)).await, 401, "login");
    let no_tenant = token(MARY, "system/*.read", json!({ "tenant": null }));
    assert_refused(&get(&app, &path, Some(&no_tenant)).await, 401, "login");
    let claims = json!({
        "iss": ISSUER, "aud": AUDIENCE, "tenant": PAUL, "scope": "system/*.read",
        "exp": now() + 300,
    });
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    assert_refused(&get(&app, &path, Some(&unsigned)).await, 401, "login");
    let mut tampered = mary.clone();
    tampered.pop();
    tampered.push(if mary.ends_with('A') { 'B' } else { 'A' });
    assert_refused(&get(&app, &path, Some(&tampered)).await, 401, "login");

    // The CapabilityStatement is public: clients read it before they have a token.
    assert_eq!(get(&app, "/fhir/metadata", None).await.status, 200);
    app.shutdown().await;
}

/// A write with a token (or none).
async fn write(
    app: &App,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &Value,
) -> common::HttpResponse {
    let auth = token.map(bearer);
    let mut headers = vec![("Content-Type", "application/fhir+json")];
    if let Some(a) = auth.as_deref() {
        headers.push(("Authorization", a));
    }
    http(
        app.http_addr,
        method,
        path,
        &headers,
        body.to_string().as_bytes(),
    )
    .await
}

/// Writes need write scopes, land in the token's tenant, and cannot touch another tenant's data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_need_write_scopes_and_stay_in_the_tokens_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let app = start(dir.path()).await;
    let patient = json!({
        "resourceType": "Patient",
        "identifier": [{ "system": "urn:oid:1.2.3.4", "value": "W-1" }],
        "name": [{ "family": "Write" }]
    });
    let create = |scope: &str| token(MARY, scope, json!({}));
    // Read scopes (v1 and v2) do not allow a create; no token is a 401.
    let read_only = write(
        &app,
        "POST",
        "/fhir/Patient",
        Some(&create("system/Patient.read")),
        &patient,
    )
    .await;
    assert_refused(&read_only, 403, "forbidden");
    let rs = write(
        &app,
        "POST",
        "/fhir/Patient",
        Some(&create("system/Patient.rs")),
        &patient,
    )
    .await;
    assert_refused(&rs, 403, "forbidden");
    let anonymous = write(&app, "POST", "/fhir/Patient", None, &patient).await;
    assert_refused(&anonymous, 401, "login");
    // v2 `c` creates; a Patient write scope does not cover ServiceRequest.
    let created = write(
        &app,
        "POST",
        "/fhir/Patient",
        Some(&create("system/Patient.cu system/Patient.r")),
        &patient,
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.json()["id"].as_str().unwrap().to_owned();
    let order = json!({
        "resourceType": "ServiceRequest", "status": "active", "intent": "order",
        "code": { "text": "x" }, "subject": { "reference": format!("Patient/{id}") }
    });
    let no_order_scope = write(
        &app,
        "POST",
        "/fhir/ServiceRequest",
        Some(&create("system/Patient.cu")),
        &order,
    )
    .await;
    assert_refused(&no_order_scope, 403, "forbidden");

    // Paul's token: Mary's Patient is unknown to it, for reading, updating and as an order's subject.
    let paul = token(PAUL, "system/*.cruds", json!({}));
    let r = get(&app, &format!("/fhir/Patient/{id}"), Some(&paul)).await;
    assert_refused(&r, 404, "not-found");
    let mut update = created.json();
    update["name"][0]["family"] = json!("Hijack");
    let hijack = write(
        &app,
        "PUT",
        &format!("/fhir/Patient/{id}"),
        Some(&paul),
        &update,
    )
    .await;
    assert_refused(&hijack, 404, "not-found");
    let foreign_subject = write(&app, "POST", "/fhir/ServiceRequest", Some(&paul), &order).await;
    assert_eq!(foreign_subject.status, 422, "{}", foreign_subject.body);
    // The same identifier in Paul's tenant is Paul's own patient, not a conflict with Mary's.
    let own = write(&app, "POST", "/fhir/Patient", Some(&paul), &patient).await;
    assert_eq!(own.status, 201, "{}", own.body);
    assert_ne!(own.json()["id"], json!(id));
    let mary = token(MARY, "system/Patient.r", json!({}));
    let still = get(&app, &format!("/fhir/Patient/{id}"), Some(&mary)).await;
    assert_eq!(still.json()["name"][0]["family"], "Write");
    app.shutdown().await;
}
