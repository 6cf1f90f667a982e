//! The ingest pipeline: frame payload → decode → parse → validate → map → durable commit → ACK.
//!
//! This sits between the MLLP listener and the inner parts (`hl7`, `mapping`, `store`). Its one
//! promise: an accepting ACK (AA/CA) is built for a message only once the message's inbound log
//! row, idempotency record and domain events are committed, in one transaction. A resend (same tenant, MSH-3, MSH-4 and MSH-10, same content)
//! gets the byte-identical original ACK and writes nothing. Bad input gets AE/AR with an ERR segment
//! saying what is wrong, and its raw bytes are kept in the inbound log.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::config::UnmappedPolicy;
use crate::domain::stream_id;
use crate::hl7::ack::{
    AckCode, AckError, AckHeader, AckMode, Disposition, ErrorCode, ErrorLocation, build_ack,
};
use crate::hl7::{Charset, DecodeError, DecodeOptions, Message, ParseError, decode, encode};
use crate::mapping::{MapError, Mapped, MappedEvent, MappingSet};
use crate::store::group_commit::{CommitError, GroupCommitter};
use crate::store::{
    DynStore, ExpectedVersion, IdempotencyKey, IdempotencyRecord, InboundRecord, InboundStatus,
    IngestOutcome, IngestWrite, NewEvent,
};

/// HL7 versions Ferry accepts in MSH-12.
pub const KNOWN_VERSIONS: &[&str] = &[
    "2.1", "2.2", "2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.6.1", "2.7", "2.7.1", "2.8",
    "2.8.1", "2.8.2", "2.9",
];

/// What the pipeline needs to know about the listener a message came in on.
#[derive(Debug, Clone)]
pub struct ListenerContext {
    pub name: String,
    pub hospital_id: String,
    pub decode: DecodeOptions,
    /// What to answer when no mapping handles the message type.
    pub unmapped: UnmappedPolicy,
}

/// The pipeline's answer to one frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// ACK payload to send (unframed), or `None` when nothing is to be sent (enhanced mode with
    /// MSH-15 NE/ER/SU saying so, or an oversized frame whose MSH could not be read).
    pub ack: Option<Bytes>,
    /// The code of the ACK (also when it is not sent).
    pub code: AckCode,
    /// Close the connection after sending.
    pub close: bool,
}

/// Generates the ACKs' own control IDs: 13 digits of milliseconds and a 7-digit sequence (20
/// characters, the MSH-10 maximum of v2.5), the sequence starting at a random point so that two
/// instances started in the same millisecond do not collide.
#[derive(Debug)]
pub struct ControlIds {
    seq: AtomicU64,
}

impl Default for ControlIds {
    fn default() -> Self {
        let start = u64::from(Uuid::now_v7().as_u128() as u32) % 10_000_000;
        Self {
            seq: AtomicU64::new(start),
        }
    }
}

impl ControlIds {
    pub fn next(&self, now: OffsetDateTime) -> String {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) % 10_000_000;
        let millis = (now.unix_timestamp_nanos() / 1_000_000).rem_euclid(10_i128.pow(13));
        format!("{millis:013}{seq:07}")
    }
}

/// The active mapping set, swapped as a whole on hot reload (see `crate::reload`).
pub type Mappings = Arc<ArcSwap<MappingSet>>;

/// The ingest pipeline shared by all connections of all MLLP listeners.
pub struct Ingest {
    committer: GroupCommitter,
    /// For the rare lookups outside a commit (a resend whose mapping now fails).
    store: DynStore,
    mappings: Mappings,
    ids: ControlIds,
}

struct Rejection {
    disposition: Disposition,
    error: AckError,
}

impl Ingest {
    pub fn new(committer: GroupCommitter, store: DynStore, mappings: Mappings) -> Self {
        Self {
            committer,
            store,
            mappings,
            ids: ControlIds::default(),
        }
    }

    /// Processes one frame's payload and returns what to answer. Never panics on input and never
    /// returns an accepting ACK for something not committed.
    pub async fn handle(&self, ctx: &ListenerContext, peer: &str, payload: &[u8]) -> Reply {
        let reply = self.process(ctx, peer, payload).await;
        metrics::counter!(
            "ferry_messages_total",
            "listener" => ctx.name.clone(),
            "code" => reply.code.as_str()
        )
        .increment(1);
        reply
    }

    async fn process(&self, ctx: &ListenerContext, peer: &str, payload: &[u8]) -> Reply {
        let received = Received {
            ctx,
            peer,
            at: OffsetDateTime::now_utc(),
            payload,
        };
        let decoded = match decode(payload, &ctx.decode) {
            Ok(d) => d,
            Err(e) => {
                let header = AckHeader::from_raw(&String::from_utf8_lossy(payload));
                return self
                    .reject(&received, None, None, &header, decode_rejection(&e))
                    .await;
            }
        };
        if decoded.used_fallback {
            tracing::warn!(
                listener = %ctx.name,
                peer,
                declared = decoded.declared.as_deref().unwrap_or(""),
                used = decoded.charset.hl7_name(),
                "Message bytes were not valid in the declared character set; decoded with the fallback."
            );
        }
        let text: &str = &decoded.text;
        let charset = decoded.charset;
        let parsed = match text.find('\0') {
            // NUL is no HL7 character, and PostgreSQL text cannot hold it: refuse the message,
            // keeping its raw bytes (but not the text), before it can reach a shared commit.
            Some(at) => Err((None, nul_rejection(at))),
            None => Message::parse(text).map_err(|e| (Some(text), classify_parse_error(&e))),
        };
        let message = match parsed {
            Ok(m) => m,
            Err((kept_text, rejection)) => {
                let header = AckHeader::from_raw(text);
                return self
                    .reject(&received, kept_text, Some(charset), &header, rejection)
                    .await;
            }
        };
        let header = AckHeader::from_message(&message);
        if let Some(error) = validate_header(&message) {
            let rejection = Rejection {
                disposition: Disposition::Reject,
                error,
            };
            return self
                .reject(&received, Some(text), Some(charset), &header, rejection)
                .await;
        }
        self.accept(&received, &message, charset, &header).await
    }

    /// Answers a frame that exceeded the listener's maximum size: AR when its MSH can be read, then
    /// the connection is closed either way. The head of the frame is kept in the inbound log.
    pub async fn handle_oversized(
        &self,
        ctx: &ListenerContext,
        peer: &str,
        head: &[u8],
        max_frame_bytes: usize,
    ) -> Reply {
        let received = Received {
            ctx,
            peer,
            at: OffsetDateTime::now_utc(),
            payload: head,
        };
        let text = String::from_utf8_lossy(head);
        let header = AckHeader::from_raw(&text);
        let readable = header != AckHeader::unknown();
        let rejection = Rejection {
            disposition: Disposition::Reject,
            error: AckError::new(
                ErrorCode::DataTypeError,
                None,
                format!(
                    "the message is larger than this listener's limit of {max_frame_bytes} bytes (max_frame_bytes); it was not accepted and the connection is closed"
                ),
            ),
        };
        let kept_text = (!text.contains('\0')).then_some(text.as_ref());
        let mut reply = self
            .reject(&received, kept_text, None, &header, rejection)
            .await;
        if !readable {
            reply.ack = None;
        }
        reply.close = true;
        reply
    }

    async fn accept(
        &self,
        received: &Received<'_>,
        message: &Message<'_>,
        charset: Charset,
        header: &AckHeader,
    ) -> Reply {
        let ctx = received.ctx;
        let now = OffsetDateTime::now_utc();
        let send_code = header.mode.code_for(Disposition::Accept);
        let code = send_code.unwrap_or(match header.mode {
            AckMode::Original => AckCode::AA,
            AckMode::Enhanced { .. } => AckCode::CA,
        });
        let content_hash = content_hash(message);
        let inbound_id = Uuid::now_v7();
        let key = IdempotencyKey {
            hospital_id: ctx.hospital_id.clone(),
            sending_application: message.msh_field(3).to_owned(),
            sending_facility: message.msh_field(4).to_owned(),
            control_id: message.msh_field(10).to_owned(),
        };
        // One snapshot of the mapping set for the whole message: a reload in between cannot mix
        // two sets' rules in one message's events.
        let mappings = self.mappings.load_full();
        let events = match mappings.map(message) {
            Ok(Mapped::Events(events)) => {
                let meta = EventContext {
                    received,
                    message,
                    inbound_id,
                    mapping_version: mappings.version(),
                };
                events.into_iter().map(|e| meta.new_event(e)).collect()
            }
            Ok(Mapped::Unmapped) => match ctx.unmapped {
                UnmappedPolicy::Accept => {
                    tracing::debug!(listener = %ctx.name, message_type = message.msh_field(9), "No mapping for this message type; accepted unmapped.");
                    metrics::counter!("ferry_messages_unmapped_total", "listener" => ctx.name.clone()).increment(1);
                    Vec::new()
                }
                UnmappedPolicy::Reject => {
                    let rejection = Rejection {
                        disposition: Disposition::Reject,
                        error: AckError::new(
                            ErrorCode::UnsupportedMessageType,
                            Some(ErrorLocation::msh(9)),
                            format!(
                                "no mapping handles message type {} and this listener rejects unmapped messages (unmapped = \"reject\")",
                                message.msh_field(9)
                            ),
                        ),
                    };
                    return self
                        .reject(
                            received,
                            Some(message.text()),
                            Some(charset),
                            header,
                            rejection,
                        )
                        .await;
                }
            },
            Err(error) => {
                return self
                    .mapping_failed(
                        received,
                        message,
                        charset,
                        header,
                        &key,
                        &content_hash,
                        &error,
                    )
                    .await;
            }
        };
        let ack_text = build_ack(header, code, &[], &self.ids.next(now), now);
        let ack_bytes = encode(&ack_text, charset).into_owned();
        let write = IngestWrite {
            inbound: InboundRecord {
                id: inbound_id,
                hospital_id: ctx.hospital_id.clone(),
                listener: ctx.name.clone(),
                peer: received.peer.to_owned(),
                received_at: received.at,
                raw: received.payload.to_vec(),
                decoded: Some(message.text().to_owned()),
                charset: Some(charset.hl7_name().to_owned()),
                sending_application: Some(key.sending_application.clone()),
                sending_facility: Some(key.sending_facility.clone()),
                control_id: Some(key.control_id.clone()),
                message_type: Some(message.msh_field(9).to_owned()),
                status: InboundStatus::Accepted,
                ack_code: send_code.map(|c| c.as_str().to_owned()),
                error: None,
            },
            idempotency: Some(IdempotencyRecord {
                key,
                content_hash: content_hash.clone(),
                ack: ack_bytes.clone(),
                inbound_id,
            }),
            events,

            preconditions: Vec::new(),
        };
        let peer = received.peer;
        match self.committer.commit(write).await {
            Ok(IngestOutcome::Stored) => {
                tracing::debug!(listener = %ctx.name, peer, code = code.as_str(), "Message committed.");
                Reply {
                    ack: send_code.map(|_| Bytes::from(ack_bytes)),
                    code,
                    close: false,
                }
            }
            Ok(IngestOutcome::Duplicate {
                content_hash: original_hash,
                ack,
                ..
            }) if original_hash == content_hash => {
                tracing::info!(listener = %ctx.name, peer, "Resend answered with the original ACK; nothing stored.");
                Reply {
                    ack: send_code.map(|_| Bytes::from(ack)),
                    code,
                    close: false,
                }
            }
            Ok(IngestOutcome::Duplicate { .. }) => {
                let rejection = Rejection {
                    disposition: Disposition::Error,
                    error: AckError::new(
                        ErrorCode::DuplicateKeyIdentifier,
                        Some(ErrorLocation::msh(10)),
                        "this message control ID (MSH-10) was already used by a different message from the same sending application and facility (MSH-3, MSH-4); every message needs its own control ID",
                    ),
                };
                self.reject(
                    received,
                    Some(message.text()),
                    Some(charset),
                    header,
                    rejection,
                )
                .await
            }
            Err(e) => store_failure_reply(ctx, peer, header, charset, &self.ids, &e),
        }
    }

    /// A message the active mappings cannot map: AE pointing at the field. A resend of a message
    /// accepted earlier (perhaps under an older mapping set) still gets its original ACK: the
    /// promise to the sender does not change with the mappings.
    #[allow(clippy::too_many_arguments)]
    async fn mapping_failed(
        &self,
        received: &Received<'_>,
        message: &Message<'_>,
        charset: Charset,
        header: &AckHeader,
        key: &IdempotencyKey,
        content_hash: &[u8],
        error: &MapError,
    ) -> Reply {
        if let Ok(Some(original)) = self.store.idempotency(key).await
            && original.content_hash == content_hash
        {
            let code = header.mode.code_for(Disposition::Accept);
            return Reply {
                ack: code.map(|_| Bytes::from(original.ack)),
                code: code.unwrap_or(AckCode::AA),
                close: false,
            };
        }
        tracing::info!(
            listener = %received.ctx.name,
            mapping = %error.mapping,
            error_code = error.code.code(),
            path = %error.path,
            "Message could not be mapped."
        );
        let rejection = Rejection {
            disposition: Disposition::Error,
            error: AckError::new(
                error.code.error_code(),
                error.location.clone().map(ErrorLocation::from),
                format!("{} (mapping {})", error.message, error.mapping),
            ),
        };
        self.reject(
            received,
            Some(message.text()),
            Some(charset),
            header,
            rejection,
        )
        .await
    }

    /// Logs a rejected message (raw bytes kept, no idempotency record, so a corrected resend is
    /// processed afresh) and builds its NAK.
    async fn reject(
        &self,
        received: &Received<'_>,
        text: Option<&str>,
        charset: Option<Charset>,
        header: &AckHeader,
        rejection: Rejection,
    ) -> Reply {
        let ctx = received.ctx;
        let now = OffsetDateTime::now_utc();
        let send_code = header.mode.code_for(rejection.disposition);
        let code = send_code.unwrap_or(match rejection.disposition {
            Disposition::Error => AckCode::AE,
            _ => AckCode::AR,
        });
        let ack_text = build_ack(
            header,
            code,
            std::slice::from_ref(&rejection.error),
            &self.ids.next(now),
            now,
        );
        let ack_bytes = encode(&ack_text, charset.unwrap_or(Charset::Utf8)).into_owned();
        tracing::info!(
            listener = %ctx.name,
            peer = received.peer,
            code = code.as_str(),
            error_code = rejection.error.code.code(),
            location = rejection.error.location.as_ref().map(|l| format!("{}-{}", l.segment, l.field.unwrap_or(0))).unwrap_or_default(),
            "Message rejected."
        );
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let write = IngestWrite {
            inbound: InboundRecord {
                id: Uuid::now_v7(),
                hospital_id: ctx.hospital_id.clone(),
                listener: ctx.name.clone(),
                peer: received.peer.to_owned(),
                received_at: received.at,
                raw: received.payload.to_vec(),
                decoded: text.map(str::to_owned),
                charset: charset.map(|c| c.hl7_name().to_owned()),
                sending_application: non_empty(&header.sending_application),
                sending_facility: non_empty(&header.sending_facility),
                control_id: non_empty(&header.control_id),
                message_type: text.and_then(raw_msh9).map(str::to_owned),
                status: InboundStatus::Rejected,
                ack_code: send_code.map(|c| c.as_str().to_owned()),
                error: Some(rejection.error.diagnostic.clone()),
            },
            idempotency: None,
            events: Vec::new(),

            preconditions: Vec::new(),
        };
        if let Err(e) = self.committer.commit(write).await {
            // The NAK still goes out: it accepts nothing, and tells the sender to look at it.
            tracing::error!(error = %e, listener = %ctx.name, "Could not log a rejected message.");
        }
        Reply {
            ack: send_code.map(|_| Bytes::from(ack_bytes)),
            code,
            close: false,
        }
    }
}

/// What every event of one message carries in its metadata.
struct EventContext<'r, 'm> {
    received: &'r Received<'r>,
    message: &'r Message<'m>,
    inbound_id: Uuid,
    mapping_version: &'r str,
}

impl EventContext<'_, '_> {
    /// The stored event: its stream id derived from the tenant and the key the mapping found, and
    /// metadata saying where it came from. The ids of the patient, encounter and order streams the
    /// payload mentions are in `metadata.streams`, so projections and outbound lanes (per patient)
    /// need not derive them again.
    fn new_event(&self, event: MappedEvent) -> NewEvent {
        let tenant = self.received.ctx.hospital_id.as_str();
        let (authority, value) = &event.stream_key;
        let streams = event.keys.ids(tenant);
        let received_at = self
            .received
            .at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        NewEvent {
            stream_id: stream_id(event.stream, tenant, authority.as_deref(), value),
            // HL7 feeds are authoritative and ordered by their sender: append whatever the
            // stream's version. FHIR writes with If-Match will use `Exactly`.
            expected_version: ExpectedVersion::Any,
            deliveries: Vec::new(),
            event_type: event.event_type,
            schema_version: event.schema_version,
            payload: event.payload,
            metadata: serde_json::json!({
                "channel": self.received.ctx.name,
                "sender": {
                    "application": self.message.msh_field(3),
                    "facility": self.message.msh_field(4),
                },
                "control_id": self.message.msh_field(10),
                "message_type": self.message.msh_field(9),
                "inbound_id": self.inbound_id.hyphenated().to_string(),
                "mapping": &event.mapping,
                "mapping_version": self.mapping_version,
                "received_at": received_at,
                "streams": streams,
            }),
        }
    }
}

/// One received frame and where it came from.
struct Received<'a> {
    ctx: &'a ListenerContext,
    peer: &'a str,
    at: OffsetDateTime,
    payload: &'a [u8],
}

fn decode_rejection(e: &DecodeError) -> Rejection {
    match e {
        DecodeError::UnknownCharset { name } => Rejection {
            disposition: Disposition::Reject,
            error: AckError::new(
                ErrorCode::DataTypeError,
                Some(ErrorLocation::msh(18)),
                format!(
                    "MSH-18 names the character set {name:?}, which Ferry does not support; use ASCII, 8859/1 or UNICODE UTF-8"
                ),
            ),
        },
        DecodeError::Invalid { .. } => Rejection {
            disposition: Disposition::Error,
            error: AckError::new(
                ErrorCode::DataTypeError,
                Some(ErrorLocation::msh(18)),
                format!("{e}; the message could not be read as text"),
            ),
        },
    }
}

fn nul_rejection(at: usize) -> Rejection {
    Rejection {
        disposition: Disposition::Error,
        error: AckError::new(
            ErrorCode::DataTypeError,
            None,
            format!(
                "the message contains a NUL character (at byte {at}), which HL7 v2 text cannot contain"
            ),
        ),
    }
}

/// The reply when the store could not commit: AE/CE with a retry-later diagnostic, never AA.
fn store_failure_reply(
    ctx: &ListenerContext,
    peer: &str,
    header: &AckHeader,
    charset: Charset,
    ids: &ControlIds,
    error: &CommitError,
) -> Reply {
    tracing::error!(error = %error, listener = %ctx.name, peer, "Message not stored; answering with a retry-later NAK.");
    let now = OffsetDateTime::now_utc();
    let send_code = header.mode.code_for(Disposition::Error);
    let code = send_code.unwrap_or(AckCode::AE);
    let err = AckError::new(
        ErrorCode::ApplicationInternalError,
        None,
        "Ferry could not store the message (its database is unavailable), so it was not accepted; resend it later",
    );
    let ack_text = build_ack(header, code, &[err], &ids.next(now), now);
    Reply {
        ack: send_code.map(|_| Bytes::from(encode(&ack_text, charset).into_owned())),
        code,
        close: false,
    }
}

/// MSH-9 read from raw text, for the inbound log of messages that did not parse.
fn raw_msh9(text: &str) -> Option<&str> {
    let header = text.strip_prefix('\u{feff}').unwrap_or(text);
    let line = header.split(['\r', '\n']).next()?;
    let rest = line.strip_prefix("MSH")?;
    let fs = rest.chars().next()?;
    let v = rest[fs.len_utf8()..].split(fs).nth(7)?;
    (!v.is_empty()).then_some(v)
}

/// SHA-256 over the segments joined by `\r`, so a resend that differs only in line endings or a
/// byte-order mark is recognised as the same content.
fn content_hash(message: &Message<'_>) -> Vec<u8> {
    let mut hasher = Sha256::new();
    for segment in message.segments() {
        hasher.update(segment.raw().as_bytes());
        hasher.update(b"\r");
    }
    hasher.finalize().to_vec()
}

fn classify_parse_error(e: &ParseError) -> Rejection {
    let location = e.location().map(ErrorLocation::from);
    let (disposition, code, text): (Disposition, ErrorCode, Cow<'static, str>) = match e {
        ParseError::Empty => (
            Disposition::Reject,
            ErrorCode::SegmentSequenceError,
            "the message is empty".into(),
        ),
        ParseError::NoMsh { .. } => (
            Disposition::Reject,
            ErrorCode::SegmentSequenceError,
            format!("{e}; every HL7 v2 message starts with MSH").into(),
        ),
        ParseError::BadFieldSeparator { .. } | ParseError::BadEncodingCharacters { .. } => (
            Disposition::Reject,
            ErrorCode::DataTypeError,
            e.to_string().into(),
        ),
        ParseError::BadSegmentId { .. } => (
            Disposition::Error,
            ErrorCode::SegmentSequenceError,
            e.to_string().into(),
        ),
    };
    Rejection {
        disposition,
        error: AckError::new(code, location, text),
    }
}

/// Message codes and trigger events are three characters in HL7's tables (ADT, A01), but sites
/// define local ones (`CUSTOM^PAT`, `ZDT^Z01`): accept up to 20 uppercase letters, digits or `_`,
/// which still rejects the junk seen in the wild (`{}`, `A03*`, lower case).
fn is_code(s: &str) -> bool {
    (1..=20).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        && !s.starts_with('_')
}

/// Header checks whose failure is the sender's problem (AR): message type, control ID, processing
/// ID and version must be usable.
pub fn validate_header(message: &Message<'_>) -> Option<AckError> {
    let msh = message.msh();
    let msh9 = msh.field(9);
    let Some(msh9) = msh9.filter(|f| !f.is_empty()) else {
        return Some(AckError::new(
            ErrorCode::RequiredFieldMissing,
            Some(ErrorLocation::msh(9)),
            "MSH-9 (message type) is empty; it must name the message type and trigger event, e.g. ADT^A01",
        ));
    };
    let code = msh9.component(1).map(|c| c.decoded()).unwrap_or_default();
    if !is_code(&code) {
        return Some(AckError::new(
            ErrorCode::UnsupportedMessageType,
            Some(ErrorLocation {
                component: Some(1),
                repetition: Some(1),
                ..ErrorLocation::msh(9)
            }),
            "MSH-9.1 (message code) must be uppercase letters or digits, e.g. ADT or ORM",
        ));
    }
    let trigger = msh9.component(2).map(|c| c.decoded()).unwrap_or_default();
    if !trigger.is_empty() && !is_code(&trigger) {
        return Some(AckError::new(
            ErrorCode::UnsupportedEventCode,
            Some(ErrorLocation {
                component: Some(2),
                repetition: Some(1),
                ..ErrorLocation::msh(9)
            }),
            "MSH-9.2 (trigger event) must be uppercase letters or digits, e.g. A01",
        ));
    }
    if message.msh_field(10).trim().is_empty() {
        return Some(AckError::new(
            ErrorCode::RequiredFieldMissing,
            Some(ErrorLocation::msh(10)),
            "MSH-10 (message control ID) is empty; every message needs a unique control ID so that its ACK can be matched and resends recognised",
        ));
    }
    let processing = msh
        .field(11)
        .and_then(|f| f.component(1))
        .map(|c| c.decoded())
        .unwrap_or_default();
    if !(processing.is_empty()
        || processing.len() == 1 && processing.bytes().all(|b| b.is_ascii_uppercase()))
    {
        return Some(AckError::new(
            ErrorCode::UnsupportedProcessingId,
            Some(ErrorLocation::msh(11)),
            "MSH-11 (processing ID) must be a one-letter code: P (production), D (debugging) or T (training)",
        ));
    }
    let version = msh
        .field(12)
        .and_then(|f| f.component(1))
        .map(|c| c.decoded())
        .unwrap_or_default();
    if version.is_empty() {
        return Some(AckError::new(
            ErrorCode::RequiredFieldMissing,
            Some(ErrorLocation::msh(12)),
            "MSH-12 (version ID) is empty; it must name the HL7 version, e.g. 2.5.1",
        ));
    }
    if !KNOWN_VERSIONS.contains(&version.as_ref()) {
        return Some(AckError::new(
            ErrorCode::UnsupportedVersionId,
            Some(ErrorLocation::msh(12)),
            format!(
                "MSH-12 (version ID) is not an HL7 v2 version Ferry knows; supported: {}",
                KNOWN_VERSIONS.join(", ")
            ),
        ));
    }
    None
}
