//! Every official R4 example Patient and ServiceRequest of `../shared/corpus/fhir/r4-examples/`
//! can be created through the API and reads back equal in the fields Ferry supports.
//!
//! Each example is created in a tenant of its own (a bearer token per example), because the
//! examples are separate stories: `Patient-mom` and `Patient-genetics-example1` carry the same
//! SSN, which in one tenant is one patient (a second create of it is a 409, tested in
//! `fhir_write.rs`).
//!
//! What "the fields Ferry supports" are, per resource (everything else is not kept; see
//! `mappings/fhir/`):
//! * Patient: identifier (system, value; those with a value), name (use, family, given, the
//!   first prefix and suffix), gender, birthDate, address (use, line, city, state, postalCode,
//!   country), telecom (system, value, use; those with a value), deceased.
//! * ServiceRequest: the first identifier (system, value), status, code (first coding's system,
//!   code and display, or the text alone), priority, subject, authoredOn, occurrenceDateTime,
//!   requester's display.
//!
//! A ServiceRequest's subject must be a Patient Ferry holds. Where an example points at an
//! example Patient of the corpus (`Patient/example`), that Patient is created first and the
//! reference pointed at its Ferry id; where it names no Patient Ferry could hold (a display
//! only, an id the corpus does not have, another server's URL), Ferry's 422 is checked and a
//! stand-in Patient is given instead.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use common::http;
use ferry::app::App;
use ferry::auth::{AuthMode, AuthSettings};
use ferry::config::Settings;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const ISSUER: &str = "https://auth.example";
const AUDIENCE: &str = "https://ferry.example/fhir";
const SECRET: &str = "corpus-test-secret-of-enough-length";

fn examples_dir() -> Option<PathBuf> {
    ferry::testing::corpus_dir("fhir/r4-examples")
}

fn token(tenant: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "corpus", "tenant": tenant,
        "scope": "system/*.cruds", "iat": now, "exp": now + 600,
    });
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

async fn start(dir: &Path) -> App {
    let mut s = Settings {
        listeners: Vec::new(),
        shutdown_grace_secs: 5,
        ..Settings::default()
    };
    s.store.url = format!("sqlite://{}/ferry.db", dir.display());
    s.http.listen = "127.0.0.1:0".parse().unwrap();
    s.mappings.dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings");
    s.auth = AuthMode::Bearer(AuthSettings {
        issuer: ISSUER.into(),
        audience: AUDIENCE.into(),
        jwks_file: None,
        jwks_url: None,
        jwks_refresh_secs: 300,
        hs256_secret: Some(ferry::auth::Secret::new(SECRET)),
        tenant_claim: "tenant".into(),
        leeway_secs: 30,
    });
    App::start(&s).await.unwrap()
}

async fn post(addr: SocketAddr, tenant: &str, path: &str, body: &Value) -> common::HttpResponse {
    let auth = format!("Bearer {}", token(tenant));
    http(
        addr,
        "POST",
        path,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/fhir+json"),
        ],
        body.to_string().as_bytes(),
    )
    .await
}

async fn read(addr: SocketAddr, tenant: &str, path: &str) -> Value {
    let auth = format!("Bearer {}", token(tenant));
    let r = http(addr, "GET", path, &[("Authorization", &auth)], b"").await;
    assert_eq!(r.status, 200, "GET {path}: {}", r.body);
    r.json()
}

fn load(dir: &Path, name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join(name)).unwrap()).unwrap()
}

/// `value[key]` as a list (absent: empty).
fn list<'v>(value: &'v Value, key: &str) -> Vec<&'v Value> {
    value[key]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

/// The listed members of an object, absent ones left out, for comparing projections.
fn pick(value: &Value, keys: &[&str]) -> Value {
    let mut out = serde_json::Map::new();
    for k in keys {
        if let Some(v) = value.get(*k).filter(|v| !v.is_null()) {
            out.insert((*k).to_owned(), v.clone());
        }
    }
    Value::Object(out)
}

fn with_value(items: Vec<&Value>) -> Vec<&Value> {
    items
        .into_iter()
        .filter(|i| i["value"].as_str().is_some_and(|v| !v.trim().is_empty()))
        .collect()
}

/// Patient: what was sent against what reads back, in the supported fields.
fn compare_patient(name: &str, sent: &Value, got: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let mut check = |what: &str, a: Value, b: Value| {
        if a != b {
            problems.push(format!("{name}: {what}: sent {a}, read {b}"));
        }
    };
    let ids = |v: &Value| {
        Value::Array(
            with_value(list(v, "identifier"))
                .into_iter()
                .map(|i| pick(i, &["system", "value"]))
                .collect(),
        )
    };
    check("identifier", ids(sent), ids(got));
    let names = |v: &Value| {
        Value::Array(
            list(v, "name")
                .into_iter()
                .map(|n| {
                    let mut p = pick(n, &["use", "family", "given"]);
                    for k in ["prefix", "suffix"] {
                        if let Some(first) = n[k].get(0) {
                            p[k] = json!([first]);
                        }
                    }
                    p
                })
                .filter(|p| p.as_object().is_some_and(|o| o.keys().any(|k| k != "use")))
                .collect(),
        )
    };
    check("name", names(sent), names(got));
    check("gender", sent["gender"].clone(), got["gender"].clone());
    check(
        "birthDate",
        sent["birthDate"].clone(),
        got["birthDate"].clone(),
    );
    let addresses = |v: &Value| {
        Value::Array(
            list(v, "address")
                .into_iter()
                .map(|a| {
                    pick(
                        a,
                        &["use", "line", "city", "state", "postalCode", "country"],
                    )
                })
                .collect(),
        )
    };
    check("address", addresses(sent), addresses(got));
    let telecoms = |v: &Value| {
        Value::Array(
            with_value(list(v, "telecom"))
                .into_iter()
                .map(|t| pick(t, &["system", "value", "use"]))
                .collect(),
        )
    };
    check("telecom", telecoms(sent), telecoms(got));
    // deceasedBoolean false is the default: Ferry leaves it out.
    let deceased = |v: &Value| match (&v["deceasedBoolean"], &v["deceasedDateTime"]) {
        (_, Value::String(at)) => json!(at),
        (Value::Bool(true), _) => json!(true),
        _ => Value::Null,
    };
    check("deceased", deceased(sent), deceased(got));
    problems
}

fn compare_service_request(name: &str, sent: &Value, got: &Value, subject: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let mut check = |what: &str, a: Value, b: Value| {
        if a != b {
            problems.push(format!("{name}: {what}: sent {a}, read {b}"));
        }
    };
    let first_id = |v: &Value| {
        with_value(list(v, "identifier"))
            .first()
            .map(|i| pick(i, &["system", "value"]))
            .unwrap_or(Value::Null)
    };
    check("identifier", first_id(sent), first_id(got));
    for k in ["status", "priority", "authoredOn", "occurrenceDateTime"] {
        check(k, sent[k].clone(), got[k].clone());
    }
    let code = |v: &Value| match v["code"]["coding"].get(0) {
        Some(c) => pick(c, &["system", "code", "display"]),
        None => json!({ "text": v["code"]["text"] }),
    };
    check("code", code(sent), code(got));
    check(
        "subject",
        json!(subject),
        got["subject"]["reference"].clone(),
    );
    if let Some(display) = sent["requester"]["display"].as_str() {
        check(
            "requester",
            json!(display),
            got["requester"]["display"].clone(),
        );
    }
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_examples_are_created_and_read_back() {
    let Some(examples) = examples_dir() else {
        return;
    };
    let mut files: Vec<String> = std::fs::read_dir(&examples)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            (n.starts_with("Patient-") || n.starts_with("ServiceRequest-")) && n.ends_with(".json")
        })
        .collect();
    files.sort();
    let patients = files.iter().filter(|f| f.starts_with("Patient-")).count();
    let orders = files.len() - patients;
    assert!(
        patients >= 20 && orders >= 20,
        "{patients} Patients, {orders} ServiceRequests"
    );

    let dir = tempfile::tempdir().unwrap();
    let app = start(dir.path()).await;
    let addr = app.http_addr;
    let mut problems = Vec::new();
    for file in &files {
        let tenant = file.trim_end_matches(".json").to_lowercase();
        let sent = load(&examples, file);
        if file.starts_with("Patient-") {
            let r = post(addr, &tenant, "/fhir/Patient", &sent).await;
            if r.status != 201 {
                problems.push(format!("{file}: create answered {}: {}", r.status, r.body));
                continue;
            }
            let location = r.header("location").unwrap().to_owned();
            let path = location.trim_start_matches("http://ferry.test");
            let path = path.split("/_history").next().unwrap();
            let got = read(addr, &tenant, path).await;
            assert_eq!(
                got,
                r.json(),
                "{file}: the create's answer is what a read returns"
            );
            problems.extend(compare_patient(file, &sent, &got));
            continue;
        }
        // ServiceRequest: give it a subject Ferry holds.
        let reference = sent["subject"]["reference"].as_str().unwrap_or_default();
        let corpus_patient = reference
            .strip_prefix("Patient/")
            .map(|id| format!("Patient-{id}.json"))
            .filter(|f| examples.join(f).is_file());
        let patient = match &corpus_patient {
            Some(f) => load(&examples, f),
            None => {
                // Nothing Ferry could hold: the unchanged example is refused at the subject.
                let r = post(addr, &tenant, "/fhir/ServiceRequest", &sent).await;
                if r.status != 422
                    || !r.json()["issue"][0]["expression"][0]
                        .as_str()
                        .is_some_and(|e| e.starts_with("ServiceRequest.subject"))
                {
                    problems.push(format!(
                        "{file}: a subject Ferry cannot hold answered {}: {}",
                        r.status, r.body
                    ));
                }
                json!({
                    "resourceType": "Patient",
                    "identifier": [{ "system": "urn:ferry:test:stand-in", "value": tenant }]
                })
            }
        };
        let r = post(addr, &tenant, "/fhir/Patient", &patient).await;
        assert_eq!(r.status, 201, "{file}: its patient: {}", r.body);
        let patient_id = r.json()["id"].as_str().unwrap().to_owned();
        let subject = format!("Patient/{patient_id}");
        let mut order = sent.clone();
        order["subject"]["reference"] = json!(subject);
        let r = post(addr, &tenant, "/fhir/ServiceRequest", &order).await;
        if r.status != 201 {
            problems.push(format!("{file}: create answered {}: {}", r.status, r.body));
            continue;
        }
        let got = read(
            addr,
            &tenant,
            &format!("/fhir/ServiceRequest/{}", r.json()["id"].as_str().unwrap()),
        )
        .await;
        problems.extend(compare_service_request(file, &sent, &got, &subject));
    }
    app.shutdown().await;
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
