//! Sending to an HTTP receiver (a FHIR server, a webhook): one POST per message.
//!
//! 2xx is delivered; 408, 429, 5xx and network errors are retried (a `Retry-After` is honoured);
//! any other status is permanent (the request itself is wrong: retrying sends the same thing).

use std::time::Duration;

use super::settings::HttpDestination;
use super::{Failure, FailureKind};
use crate::auth::error_chain;

/// Body bytes kept of an answer (for the DLQ's "what did the receiver say").
const KEEP_BODY_BYTES: usize = 2048;

pub struct HttpSender {
    client: reqwest::Client,
    endpoint: reqwest::Url,
    headers: reqwest::header::HeaderMap,
}

/// Why an HTTP destination cannot be used (reported at start-up).
#[derive(Debug, thiserror::Error)]
pub enum HttpSetupError {
    #[error("endpoint {0:?} is not a URL")]
    Endpoint(String),
    #[error("header {name:?}: {reason}")]
    Header { name: String, reason: String },
    #[error("HTTP client: {0}")]
    Client(String),
}

impl HttpSender {
    pub fn new(settings: &HttpDestination) -> Result<Self, HttpSetupError> {
        use reqwest::header::{AUTHORIZATION, HeaderName, HeaderValue};
        let endpoint = reqwest::Url::parse(&settings.endpoint)
            .map_err(|_| HttpSetupError::Endpoint(settings.endpoint.clone()))?;
        let mut headers = reqwest::header::HeaderMap::new();
        for (name, value) in &settings.headers {
            let bad = |reason: String| HttpSetupError::Header {
                name: name.clone(),
                reason,
            };
            let n = HeaderName::try_from(name.as_str()).map_err(|e| bad(e.to_string()))?;
            let v = HeaderValue::try_from(value.as_str()).map_err(|e| bad(e.to_string()))?;
            headers.insert(n, v);
        }
        if let Some(token) = &settings.bearer_token {
            let mut v =
                HeaderValue::try_from(format!("Bearer {}", token.expose())).map_err(|_| {
                    HttpSetupError::Header {
                        name: "Authorization".into(),
                        reason: "the bearer token is not a valid header value".into(),
                    }
                })?;
            v.set_sensitive(true);
            headers.insert(AUTHORIZATION, v);
        }
        let client = crate::auth::http_client_builder()
            .map_err(HttpSetupError::Client)?
            .connect_timeout(Duration::from_secs(settings.connect_timeout_secs.max(1)))
            .timeout(Duration::from_secs_f64(settings.timeout_secs))
            .build()
            .map_err(|e| HttpSetupError::Client(e.to_string()))?;
        Ok(HttpSender {
            client,
            endpoint,
            headers,
        })
    }

    /// POSTs one message. `Ok` carries what to keep of the answer.
    pub async fn send(
        &self,
        body: Vec<u8>,
        content_type: &str,
        delivery_id: &str,
        event_type: &str,
    ) -> Result<Vec<u8>, (Failure, Option<Vec<u8>>)> {
        let response = self
            .client
            .post(self.endpoint.clone())
            .headers(self.headers.clone())
            .header(reqwest::header::CONTENT_TYPE, content_type)
            // Lets a receiver drop a resend (at-least-once delivery): the same id every attempt.
            .header("Idempotency-Key", delivery_id)
            .header("X-Ferry-Event", event_type)
            .body(body)
            .send()
            .await
            .map_err(|e| {
                let kind = if e.is_timeout() {
                    FailureKind::Timeout
                } else if e.is_connect() {
                    FailureKind::Connect
                } else {
                    FailureKind::Closed
                };
                (
                    Failure::transient(
                        kind,
                        format!("POST {}: {}", self.endpoint, error_chain(&e)),
                    ),
                    None,
                )
            })?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let mut kept = format!("HTTP {status}\r\n").into_bytes();
        if let Ok(body) = response.bytes().await {
            kept.extend_from_slice(&body[..body.len().min(KEEP_BODY_BYTES)]);
        }
        if status.is_success() {
            return Ok(kept);
        }
        let text = format!("POST {} answered {status}", self.endpoint);
        let code = status.as_u16();
        let failure = if code == 408 || code == 429 || status.is_server_error() {
            let mut f = Failure::transient(FailureKind::HttpStatus, text);
            f.retry_after = retry_after;
            f
        } else {
            Failure::permanent(FailureKind::HttpStatus, text)
        };
        Err((failure, Some(kept)))
    }
}

/// `Retry-After`: seconds, or an HTTP date (RFC 9110).
fn parse_retry_after(value: &str) -> Option<Duration> {
    if let Ok(secs) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value.trim()).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        let later = std::time::SystemTime::now() + Duration::from_secs(120);
        let d = parse_retry_after(&httpdate::fmt_http_date(later)).expect("date");
        assert!(
            d > Duration::from_secs(100) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
