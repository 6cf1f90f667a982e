//! Errors of the FHIR API, each answered as an OperationOutcome (built with fhir-sdk's models).
//! Internal details go to the log; the client gets a plain sentence and, for bad input, the
//! element or parameter at fault.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ferry_fhir::codes::{IssueSeverity, IssueType};
use ferry_fhir::resources::{OperationOutcome, OperationOutcomeIssue, Resource};

use super::FHIR_JSON;

/// An error answer.
#[derive(Debug)]
pub struct FhirError {
    pub status: StatusCode,
    pub code: IssueType,
    pub diagnostics: String,
    /// Where the problem is: an element (`Patient.gender`) or a search parameter (`birthdate`).
    pub expression: Option<String>,
    /// For 401: the `WWW-Authenticate` challenge.
    pub challenge: Option<String>,
}

impl FhirError {
    pub fn new(status: StatusCode, code: IssueType, diagnostics: impl Into<String>) -> Self {
        Self {
            status,
            code,
            diagnostics: diagnostics.into(),
            expression: None,
            challenge: None,
        }
    }

    pub fn at(mut self, expression: impl Into<String>) -> Self {
        self.expression = Some(expression.into());
        self
    }

    pub fn bad_request(diagnostics: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, IssueType::Invalid, diagnostics)
    }

    pub fn not_found(diagnostics: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, IssueType::NotFound, diagnostics)
    }

    pub fn not_supported(status: StatusCode, diagnostics: impl Into<String>) -> Self {
        Self::new(status, IssueType::NotSupported, diagnostics)
    }

    /// A failure on our side: logged with its details, answered without them.
    pub fn internal(error: &dyn std::fmt::Display) -> Self {
        let reference = uuid::Uuid::now_v7();
        tracing::error!(%error, %reference, "FHIR request failed.");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            IssueType::Exception,
            format!("internal error; the server log has the details under reference {reference}"),
        )
    }
}

impl From<crate::store::StoreError> for FhirError {
    fn from(e: crate::store::StoreError) -> Self {
        FhirError::internal(&e)
    }
}

/// An OperationOutcome with one issue, as FHIR JSON.
pub fn outcome_json(
    severity: IssueSeverity,
    code: IssueType,
    diagnostics: &str,
    expression: Option<&str>,
) -> Vec<u8> {
    let mut issue = OperationOutcomeIssue::builder()
        .severity(severity)
        .code(code)
        .diagnostics(diagnostics.to_owned());
    if let Some(e) = expression {
        issue = issue.expression(vec![Some(e.to_owned())]);
    }
    let built = issue
        .build()
        .and_then(|issue| OperationOutcome::builder().issue(vec![Some(issue)]).build());
    match built.map(Resource::OperationOutcome) {
        Ok(resource) => ferry_fhir::to_vec(&resource).unwrap_or_default(),
        // Unreachable (every required element is set); answer with the fixed minimum anyway.
        Err(_) => br#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"exception"}]}"#.to_vec(),
    }
}

impl IntoResponse for FhirError {
    fn into_response(self) -> Response {
        let body = outcome_json(
            IssueSeverity::Error,
            self.code,
            &self.diagnostics,
            self.expression.as_deref(),
        );
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
        if let Some(challenge) = self.challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            headers.insert(header::WWW_AUTHENTICATE, challenge);
        }
        response
    }
}
