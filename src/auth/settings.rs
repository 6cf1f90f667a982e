//! The `auth` setting: the string `"none"` or an `[auth]` table.
//!
//! It lives beside the code that uses it; `config` re-exports it so `Settings` stays the one place
//! a reader looks for configuration. There is deliberately no default for a config file: a file
//! that forgets `auth` fails to load ([`crate::config::Settings::from_toml`]), so authentication
//! is off only where somebody wrote `auth = "none"` (or ran without any file, the embedded demo).

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Whether and how bearer tokens are checked.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum AuthMode {
    /// `auth = "none"`: every request is let through with every scope. For the embedded demo and
    /// local trials only; start-up logs a warning.
    #[default]
    None,
    /// `[auth]`: SMART backend-services bearer tokens.
    Bearer(AuthSettings),
}

/// The `[auth]` table: where tokens come from and how they are checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// The `iss` every token must carry, exactly.
    pub issuer: String,
    /// A value the token's `aud` must contain: this server's FHIR base URL, as the authorization
    /// server knows it.
    pub audience: String,
    /// A JWKS document (RFC 7517) on disk, re-read every `jwks_refresh_secs` so a rotated file is
    /// picked up without a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<PathBuf>,
    /// The authorization server's JWKS endpoint. `https`, except on a loopback address: keys
    /// fetched over plain HTTP from elsewhere could be swapped in transit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// How old the cached key set may get before it is fetched (or read) again.
    #[serde(default = "default_jwks_refresh_secs")]
    pub jwks_refresh_secs: u64,
    /// Shared secret for HS256 tokens. Development only: whoever holds it can mint any token, so
    /// it must be at least 32 bytes, and without it HS256 tokens are refused outright.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hs256_secret: Option<Secret>,
    /// The claim that names the tenant (the `hospital_id` of the data the token may see).
    #[serde(default = "default_tenant_claim")]
    pub tenant_claim: String,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(default = "default_leeway_secs")]
    pub leeway_secs: u64,
}

fn default_jwks_refresh_secs() -> u64 {
    300
}

fn default_tenant_claim() -> String {
    "tenant".into()
}

fn default_leeway_secs() -> u64 {
    30
}

/// Shortest HS256 secret accepted: RFC 7518 §3.2 asks for a key at least as long as the hash.
pub const MIN_HS256_SECRET_BYTES: usize = 32;

/// Largest clock skew accepted: more would keep expired tokens alive for long.
pub const MAX_LEEWAY_SECS: u64 = 300;

impl AuthSettings {
    /// Checks what serde cannot. The message is a sentence for the operator.
    pub fn validate(&self) -> Result<(), String> {
        if self.issuer.trim().is_empty() {
            return Err("auth.issuer must not be empty".into());
        }
        if self.audience.trim().is_empty() {
            return Err("auth.audience must not be empty".into());
        }
        if self.tenant_claim.trim().is_empty() {
            return Err("auth.tenant_claim must not be empty".into());
        }
        if self.jwks_file.is_some() && self.jwks_url.is_some() {
            return Err("auth: give jwks_file or jwks_url, not both".into());
        }
        if self.jwks_file.is_none() && self.jwks_url.is_none() && self.hs256_secret.is_none() {
            return Err(
                "auth: no way to check signatures; give jwks_file or jwks_url (or, for development only, hs256_secret)"
                    .into(),
            );
        }
        if let Some(secret) = &self.hs256_secret
            && secret.expose().len() < MIN_HS256_SECRET_BYTES
        {
            return Err(format!(
                "auth.hs256_secret must be at least {MIN_HS256_SECRET_BYTES} bytes long"
            ));
        }
        if let Some(url) = &self.jwks_url {
            check_jwks_url(url)?;
        }
        if self.jwks_refresh_secs == 0 {
            return Err("auth.jwks_refresh_secs must be at least 1".into());
        }
        if self.leeway_secs > MAX_LEEWAY_SECS {
            return Err(format!(
                "auth.leeway_secs must be at most {MAX_LEEWAY_SECS}"
            ));
        }
        Ok(())
    }
}

/// A JWKS URL must be `https`, or `http` to a loopback address (a local test IdP): over plain
/// HTTP anyone on the path could hand Ferry their own signing keys.
fn check_jwks_url(url: &str) -> Result<(), String> {
    let parsed =
        reqwest::Url::parse(url).map_err(|e| format!("auth.jwks_url {url:?} is not a URL: {e}"))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(&parsed) => Ok(()),
        "http" => Err(format!(
            "auth.jwks_url {url:?} must use https (plain http only to a loopback address)"
        )),
        other => Err(format!(
            "auth.jwks_url {url:?} has scheme {other:?}; use https"
        )),
    }
}

fn is_loopback(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Serialize for AuthMode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            AuthMode::None => serializer.serialize_str("none"),
            AuthMode::Bearer(settings) => settings.serialize(serializer),
        }
    }
}

/// By hand rather than `#[serde(untagged)]`: untagged would replace the table's own errors
/// (`unknown field`, `missing field issuer`) with "did not match any variant".
impl<'de> Deserialize<'de> for AuthMode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ModeVisitor;

        impl<'de> Visitor<'de> for ModeVisitor {
            type Value = AuthMode;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("the string \"none\" or an [auth] table")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<AuthMode, E> {
                if value == "none" {
                    Ok(AuthMode::None)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(value), &self))
                }
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<AuthMode, A::Error> {
                AuthSettings::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(AuthMode::Bearer)
            }
        }

        deserializer.deserialize_any(ModeVisitor)
    }
}

/// A secret from the configuration. It never prints: `Debug`, `Display` and serialisation all
/// show `***`, so settings can be logged or dumped without leaking it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the one place that needs it (building the HS256 key).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn table(extra: &str) -> String {
        format!(
            "[auth]\nissuer = \"https://auth.example\"\naudience = \"https://ferry.example/fhir\"\n{extra}"
        )
    }

    fn auth(text: &str) -> AuthSettings {
        match Settings::from_toml(text).unwrap().auth {
            AuthMode::Bearer(a) => a,
            AuthMode::None => panic!("expected an [auth] table"),
        }
    }

    #[test]
    fn auth_none_and_the_table_both_load() {
        assert_eq!(
            Settings::from_toml("auth = \"none\"\n").unwrap().auth,
            AuthMode::None
        );
        let a = auth(&table("jwks_file = \"/etc/ferry/jwks.json\"\n"));
        assert_eq!(a.issuer, "https://auth.example");
        assert_eq!(a.jwks_file, Some(PathBuf::from("/etc/ferry/jwks.json")));
        assert_eq!(a.jwks_refresh_secs, 300);
        assert_eq!(a.tenant_claim, "tenant");
        assert_eq!(a.leeway_secs, 30);
        a.validate().unwrap();
    }

    #[test]
    fn a_config_file_without_auth_is_refused_with_the_fix_in_the_message() {
        let err = Settings::from_toml("[store]\nurl = \"sqlite://x.db\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("auth = \"none\""), "{err}");
        assert!(err.contains("[auth]"), "{err}");
        // The embedded defaults (no file at all) keep authentication off.
        assert_eq!(Settings::default().auth, AuthMode::None);
    }

    #[test]
    fn other_strings_and_unknown_keys_are_errors() {
        let err = Settings::from_toml("auth = \"off\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"none\""), "{err}");
        let err = Settings::from_toml(&table("jwks_file = \"x\"\naudiance = \"typo\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `audiance`"), "{err}");
        let err = Settings::from_toml("[auth]\naudience = \"a\"\njwks_file = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing field `issuer`"), "{err}");
    }

    #[test]
    fn the_secret_never_prints() {
        let a = auth(&table(&format!("hs256_secret = \"{SECRET}\"\n")));
        assert_eq!(a.hs256_secret.as_ref().map(Secret::expose), Some(SECRET));
        let debug = format!("{a:?}");
        assert!(!debug.contains(SECRET), "{debug}");
        assert!(debug.contains("\"***\""), "{debug}");
        let settings =
            Settings::from_toml(&table(&format!("hs256_secret = \"{SECRET}\"\n"))).unwrap();
        assert!(!format!("{settings:?}").contains(SECRET));
        let dumped = toml::to_string(&settings).unwrap();
        assert!(!dumped.contains(SECRET), "{dumped}");
    }

    #[test]
    fn validation_refuses_weak_or_incomplete_settings() {
        let cases = [
            ("hs256_secret = \"too-short\"\n", "at least 32 bytes"),
            ("", "no way to check signatures"),
            (
                "jwks_file = \"a\"\njwks_url = \"https://auth.example/jwks\"\n",
                "not both",
            ),
            (
                "jwks_url = \"http://auth.example/jwks\"\n",
                "must use https",
            ),
            ("jwks_url = \"ftp://auth.example/jwks\"\n", "use https"),
            ("jwks_url = \"not a url\"\n", "is not a URL"),
            ("jwks_file = \"a\"\njwks_refresh_secs = 0\n", "at least 1"),
            ("jwks_file = \"a\"\nleeway_secs = 3600\n", "at most 300"),
            ("jwks_file = \"a\"\ntenant_claim = \" \"\n", "tenant_claim"),
        ];
        for (extra, expected) in cases {
            let settings = Settings::from_toml(&table(extra)).unwrap();
            let err = settings.validate().unwrap_err().to_string();
            assert!(err.contains(expected), "{extra:?}: {err}");
        }
        let mut empty_issuer = auth(&table("jwks_file = \"a\"\n"));
        empty_issuer.issuer = " ".into();
        assert!(empty_issuer.validate().unwrap_err().contains("issuer"));
    }

    #[test]
    fn plain_http_is_allowed_to_loopback_only() {
        for ok in [
            "http://127.0.0.1:8081/jwks",
            "http://localhost/jwks",
            "http://[::1]:9/jwks",
            "https://auth.example/jwks",
        ] {
            check_jwks_url(ok).unwrap();
        }
        for bad in ["http://10.0.0.1/jwks", "http://auth.example/jwks"] {
            assert!(check_jwks_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hs256_alone_or_beside_jwks_is_valid() {
        auth(&table(&format!("hs256_secret = \"{SECRET}\"\n")))
            .validate()
            .unwrap();
        auth(&table(&format!(
            "hs256_secret = \"{SECRET}\"\njwks_url = \"https://auth.example/jwks\"\n"
        )))
        .validate()
        .unwrap();
    }
}
