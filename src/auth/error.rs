//! Why a request was not let through, and how to say so over HTTP (RFC 6750 §3).
//!
//! Every `Display` is a plain sentence meant for the client: it names what is wrong with the
//! token but never repeats the token, its claims or any key. Details that help an operator (which
//! kid, which issuer) go to the debug log instead.

use http::StatusCode;

/// The realm in every `WWW-Authenticate` challenge.
pub const REALM: &str = "ferry";

/// Why authentication or authorisation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header.
    #[error("this request needs a bearer token")]
    MissingToken,
    /// An `Authorization` header with another scheme (Basic, …). RFC 6750 §3.1 treats it like a
    /// missing token: the challenge carries no error code.
    #[error("this request needs a bearer token (Authorization: Bearer …)")]
    NotBearer,
    /// Not a JWT, or a JWT whose parts or claims cannot be read.
    #[error("the bearer token is malformed")]
    Malformed,
    /// The signature does not verify with the key the token names.
    #[error("the token's signature is invalid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token was not issued by the expected issuer")]
    WrongIssuer,
    #[error("the token is not meant for this server (audience)")]
    WrongAudience,
    /// `exp`, `iss` or `aud` absent. The claim's name is a fixed string, never token content.
    #[error("the token lacks the required claim {0}")]
    MissingClaim(&'static str),
    /// `alg: none`, HS256 where no HS256 secret is configured, an algorithm Ferry does not accept,
    /// or a key that does not fit the algorithm (algorithm confusion).
    #[error("the token's signing algorithm is not accepted")]
    Algorithm,
    /// The token names a key (kid) that is not in the key set, even after a refresh.
    #[error("the token was signed with a key this server does not know")]
    UnknownKey,
    /// The tenant claim is absent, empty or not a string.
    #[error("the token does not name a tenant")]
    MissingTenant,
    /// The token is valid but its scopes do not allow the interaction.
    #[error("the token's scopes do not allow this; it needs {scope}")]
    InsufficientScope {
        /// The narrowest scope that would allow it (v2 syntax, `system/Patient.r`).
        scope: String,
    },
    /// The key set could not be loaded (bad file, unreachable or broken JWKS endpoint). Only
    /// returned while building the [`super::Authenticator`]; afterwards a failed refresh keeps the
    /// keys it had.
    #[error("the signing keys could not be loaded from {location}: {reason}")]
    Keys { location: String, reason: String },
    /// The settings were not validated (see [`super::AuthSettings::validate`]).
    #[error("invalid auth settings: {0}")]
    Settings(String),
}

impl AuthError {
    /// The HTTP status to answer with: 401 when the client must (re)authenticate, 403 when the
    /// token is fine but not enough, 500/503 for the server's own trouble.
    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::InsufficientScope { .. } => StatusCode::FORBIDDEN,
            AuthError::Keys { .. } => StatusCode::SERVICE_UNAVAILABLE,
            AuthError::Settings(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    /// The `WWW-Authenticate` header value (RFC 6750 §3), or `None` when the failure is the
    /// server's and no challenge applies.
    pub fn www_authenticate(&self) -> Option<String> {
        let realm = format!("Bearer realm=\"{REALM}\"");
        match self {
            AuthError::MissingToken | AuthError::NotBearer => Some(realm),
            AuthError::InsufficientScope { scope } => Some(format!(
                "{realm}, error=\"insufficient_scope\", error_description=\"{}\", scope=\"{}\"",
                quoted(&self.to_string()),
                quoted(scope)
            )),
            AuthError::Keys { .. } | AuthError::Settings(_) => None,
            _ => Some(format!(
                "{realm}, error=\"invalid_token\", error_description=\"{}\"",
                quoted(&self.to_string())
            )),
        }
    }
}

/// The inside of an RFC 6750 quoted string: printable ASCII only (a header value must be), with
/// `"` and `\` escaped. Anything else becomes `?`; the texts here are ours, so that is only a
/// guard against a resource type from a URL path ending up in the header.
fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_token_gets_a_bare_challenge() {
        for e in [AuthError::MissingToken, AuthError::NotBearer] {
            assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
            assert_eq!(e.www_authenticate().unwrap(), "Bearer realm=\"ferry\"");
        }
    }

    #[test]
    fn an_invalid_token_is_401_invalid_token_with_the_sentence() {
        for e in [
            AuthError::Malformed,
            AuthError::BadSignature,
            AuthError::Expired,
            AuthError::NotYetValid,
            AuthError::WrongIssuer,
            AuthError::WrongAudience,
            AuthError::MissingClaim("exp"),
            AuthError::Algorithm,
            AuthError::UnknownKey,
            AuthError::MissingTenant,
        ] {
            assert_eq!(e.status(), StatusCode::UNAUTHORIZED, "{e:?}");
            assert_eq!(
                e.www_authenticate().unwrap(),
                format!(
                    "Bearer realm=\"ferry\", error=\"invalid_token\", error_description=\"{e}\""
                )
            );
        }
        assert_eq!(AuthError::Expired.to_string(), "the token has expired");
    }

    #[test]
    fn insufficient_scope_is_403_and_names_the_scope() {
        let e = AuthError::InsufficientScope {
            scope: "system/Patient.c".into(),
        };
        assert_eq!(e.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            e.www_authenticate().unwrap(),
            "Bearer realm=\"ferry\", error=\"insufficient_scope\", \
             error_description=\"the token's scopes do not allow this; it needs system/Patient.c\", \
             scope=\"system/Patient.c\""
        );
    }

    #[test]
    fn server_side_failures_carry_no_challenge() {
        let e = AuthError::Keys {
            location: "/etc/jwks.json".into(),
            reason: "no such file".into(),
        };
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.www_authenticate(), None);
        assert_eq!(
            AuthError::Settings("x".into()).status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn header_values_are_escaped_and_ascii() {
        let e = AuthError::InsufficientScope {
            scope: "system/Pa\"ti\\ent\u{e9}\n.r".into(),
        };
        let h = e.www_authenticate().unwrap();
        assert!(h.contains("scope=\"system/Pa\\\"ti\\\\ent??.r\""), "{h}");
        assert!(http::HeaderValue::from_str(&h).is_ok());
    }
}
