//! Sending to an MLLP receiver: connect (plain TCP or TLS), write one framed message, read the
//! answer frame and judge it. The ACK is read, not assumed: MSA-1 says what the receiver did, and
//! MSA-2 must name the control id just sent.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use super::settings::{AeAction, MllpDestination, TlsSettings};
use super::{Failure, FailureKind};
use crate::hl7::ack::{AckCode, summarize_ack};
use crate::mllp::codec::{Frame, MllpCodec};

/// Largest answer read from a receiver (an ACK is a few hundred bytes).
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// Plain TCP or TLS, behind one type.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One open connection to the receiver.
pub struct Connection {
    framed: Framed<Box<dyn Io>, MllpCodec>,
}

/// Why the TLS settings cannot be used (reported at start-up).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Pem { path: String, reason: String },
    #[error("TLS set-up: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("TLS set-up: {0}")]
    Verifier(String),
    #[error("{0:?} is not a valid TLS server name")]
    ServerName(String),
}

/// A destination's sending side: where, how, and what answers mean.
pub struct MllpSender {
    endpoint: String,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
    connect_timeout: Duration,
    ack_timeout: Duration,
    on_ae: AeAction,
}

impl MllpSender {
    pub fn new(settings: &MllpDestination) -> Result<Self, TlsError> {
        let tls = match &settings.tls {
            None => None,
            Some(t) => {
                let host = settings
                    .endpoint
                    .rsplit_once(':')
                    .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
                    .unwrap_or(&settings.endpoint);
                let name = t.server_name.clone().unwrap_or_else(|| host.to_owned());
                let server_name = rustls::pki_types::ServerName::try_from(name.clone())
                    .map_err(|_| TlsError::ServerName(name))?;
                Some((
                    tokio_rustls::TlsConnector::from(Arc::new(client_config(t)?)),
                    server_name,
                ))
            }
        };
        Ok(MllpSender {
            endpoint: settings.endpoint.clone(),
            tls,
            connect_timeout: Duration::from_secs(settings.connect_timeout_secs.max(1)),
            ack_timeout: Duration::from_secs_f64(settings.ack_timeout_secs),
            on_ae: settings.on_ae,
        })
    }

    pub async fn connect(&self) -> Result<Connection, Failure> {
        let failed = |what: String| Failure::transient(FailureKind::Connect, what);
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(&self.endpoint))
            .await
            .map_err(|_| {
                failed(format!(
                    "no connection to {} within {:?}",
                    self.endpoint, self.connect_timeout
                ))
            })?
            .map_err(|e| failed(format!("cannot connect to {}: {e}", self.endpoint)))?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = match &self.tls {
            None => Box::new(tcp),
            Some((connector, name)) => {
                let tls = tokio::time::timeout(
                    self.connect_timeout,
                    connector.connect(name.clone(), tcp),
                )
                .await
                .map_err(|_| failed(format!("TLS handshake with {} timed out", self.endpoint)))?
                .map_err(|e| failed(format!("TLS handshake with {} failed: {e}", self.endpoint)))?;
                Box::new(tls)
            }
        };
        Ok(Connection {
            framed: Framed::new(io, MllpCodec::new(MAX_ANSWER_BYTES)),
        })
    }

    /// Sends one message on `conn` and judges the answer. On any failure the connection must be
    /// dropped (its state is unknown: an answer may still be on its way).
    pub async fn send(
        &self,
        conn: &mut Connection,
        message: &[u8],
        control_id: &str,
    ) -> Result<Vec<u8>, (Failure, Option<Vec<u8>>)> {
        let closed = |e: String| {
            (
                Failure::transient(FailureKind::Closed, format!("{}: {e}", self.endpoint)),
                None,
            )
        };
        conn.framed
            .send(message)
            .await
            .map_err(|e| closed(format!("sending failed: {e}")))?;
        let answer = match tokio::time::timeout(self.ack_timeout, conn.framed.next()).await {
            Err(_) => {
                return Err((
                    Failure::transient(
                        FailureKind::Timeout,
                        format!(
                            "no ACK from {} within {:?}",
                            self.endpoint, self.ack_timeout
                        ),
                    ),
                    None,
                ));
            }
            Ok(None) => {
                return Err(closed(
                    "the receiver closed the connection without answering".into(),
                ));
            }
            Ok(Some(Err(e))) => return Err(closed(format!("reading the answer failed: {e}"))),
            Ok(Some(Ok(Frame::Oversized { .. }))) => {
                return Err((
                    Failure::transient(
                        FailureKind::Garbage,
                        "the answer was too large to be an ACK",
                    ),
                    None,
                ));
            }
            Ok(Some(Ok(Frame::Message(bytes)))) => bytes.to_vec(),
        };
        match judge(&answer, control_id, self.on_ae) {
            Ok(()) => Ok(answer),
            Err(f) => Err((f, Some(answer))),
        }
    }
}

/// What an answer frame says about the message with `control_id`.
pub fn judge(answer: &[u8], control_id: &str, on_ae: AeAction) -> Result<(), Failure> {
    let garbage = |why: &str| {
        Failure::transient(
            FailureKind::Garbage,
            format!("the answer is not an HL7 ACK: {why}"),
        )
    };
    let text = std::str::from_utf8(answer).map_err(|_| garbage("not text"))?;
    let ack = summarize_ack(text).ok_or_else(|| garbage("no MSA segment"))?;
    if ack.control_id != control_id {
        return Err(Failure::transient(
            FailureKind::WrongControlId,
            format!(
                "the ACK names control id {:?}, but {control_id:?} was sent",
                ack.control_id
            ),
        ));
    }
    // The receiver's own words (ERR-8 or ERR-7, else MSA-3).
    let reason = ack
        .diagnostics
        .iter()
        .find(|d| !d.is_empty())
        .map(|r| format!(": {r}"))
        .unwrap_or_default();
    let code = ack
        .code
        .ok_or_else(|| garbage("MSA-1 is not an acknowledgment code"))?;
    match code {
        AckCode::AA | AckCode::CA => Ok(()),
        AckCode::AE | AckCode::CE => {
            let text = format!(
                "the receiver answered {} (application error){reason}",
                code.as_str()
            );
            Err(match on_ae {
                AeAction::Retry => Failure::transient(FailureKind::Rejected, text),
                AeAction::DeadLetter => Failure::permanent(FailureKind::Rejected, text),
            })
        }
        AckCode::AR | AckCode::CR => Err(Failure::permanent(
            FailureKind::Rejected,
            format!("the receiver answered {} (rejected){reason}", code.as_str()),
        )),
    }
}

/// rustls with the ring provider (FINDINGS.md: never both providers), trusting the configured CA
/// file or else the platform's store, with a client certificate when configured.
fn client_config(t: &TlsSettings) -> Result<rustls::ClientConfig, TlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?;
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.display().to_string(),
            source,
        })
    };
    let pem_error = |path: &std::path::Path, e: rustls::pki_types::pem::Error| TlsError::Pem {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let builder = match &t.ca_file {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            let pem = read(path)?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                roots.add(cert.map_err(|e| pem_error(path, e))?)?;
            }
            if roots.is_empty() {
                return Err(TlsError::Pem {
                    path: path.display().to_string(),
                    reason: "no certificate in the file".into(),
                });
            }
            builder.with_root_certificates(roots)
        }
        None => {
            use rustls_platform_verifier::BuilderVerifierExt as _;
            builder
                .with_platform_verifier()
                .map_err(|e| TlsError::Verifier(e.to_string()))?
        }
    };
    Ok(match (&t.client_cert_file, &t.client_key_file) {
        (Some(cert), Some(key)) => {
            let pem = read(cert)?;
            let chain = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| pem_error(cert, e))?;
            let key_pem = read(key)?;
            let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| pem_error(key, e))?;
            builder.with_client_auth_cert(chain, key_der)?
        }
        _ => builder.with_no_client_auth(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(code: &str, id: &str, extra: &str) -> Vec<u8> {
        format!("MSH|^~\\&|PACS|RAD|FERRY|HOSP|20261122||ACK|A1|P|2.5.1\rMSA|{code}|{id}{extra}\r")
            .into_bytes()
    }

    #[test]
    fn answers_are_read_not_assumed() {
        let retry = AeAction::Retry;
        assert!(judge(&ack("AA", "42", ""), "42", retry).is_ok());
        assert!(judge(&ack("CA", "42", ""), "42", retry).is_ok());
        let e = judge(
            &ack("AE", "42", "\rERR||||E||||Unknown procedure code"),
            "42",
            retry,
        )
        .expect_err("AE");
        assert!(
            e.is_transient() && e.message.contains("Unknown procedure code"),
            "{e:?}"
        );
        let e = judge(&ack("AE", "42", ""), "42", AeAction::DeadLetter).expect_err("AE");
        assert!(!e.is_transient());
        let e = judge(
            &ack("AE", "42", "\rERR||||E|||Segment sequence error"),
            "42",
            retry,
        )
        .expect_err("AE with ERR-7");
        assert!(e.message.contains("Segment sequence error"), "{e:?}");
        let e = judge(&ack("AR", "42", "|bad version"), "42", retry).expect_err("AR");
        assert!(
            !e.is_transient() && e.message.contains("bad version"),
            "{e:?}"
        );
        assert!(
            !judge(&ack("CR", "42", ""), "42", retry)
                .expect_err("CR")
                .is_transient()
        );
        let e = judge(&ack("AA", "41", ""), "42", retry).expect_err("wrong MSA-2");
        assert_eq!(e.kind, FailureKind::WrongControlId);
        assert!(e.is_transient());
        let e = judge(b"HTTP/1.1 400 Bad Request\r\n", "42", retry).expect_err("garbage");
        assert_eq!(e.kind, FailureKind::Garbage);
        let e = judge(&ack("ZZ", "42", ""), "42", retry).expect_err("odd code");
        assert_eq!(e.kind, FailureKind::Garbage);
    }
}
